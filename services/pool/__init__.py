"""The worker pool (`corral pool`): starts and stops workers on one host on demand."""
