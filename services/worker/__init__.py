"""The Corral worker process (asyncio, aio-pika): no nameko, no eventlet."""
