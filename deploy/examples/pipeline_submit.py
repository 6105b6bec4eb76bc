import os, time
from nameko.standalone.rpc import ClusterRpcProxy

uri = os.environ.get("CORRAL_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
token = os.environ["CORRAL_TOKEN"]  # from `corral token create pipeline`
with ClusterRpcProxy(uri=uri, context_data={"auth_token": token}) as corral:
    job = corral.scheduler.submit_job({"name": "hello", "tasks": [
        {"command": ["echo", "frame", str(frame)]} for frame in range(1, 5)]})
    while job["state"] not in ("done", "failed", "cancelled"):
        time.sleep(0.5)
        job = corral.scheduler.get_job(job["id"])
    print(f"job {job['id']}: {job['state']} {job['counts']} as {job['user']}")
