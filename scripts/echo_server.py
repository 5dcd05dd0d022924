"""A gRPC echo baseline on the same stack as the service (grpc.aio, uvloop,
the same messages): RecordActivity answers a canned ActivityResult of the
size the service sends, doing no work; StreamActivities answers each event
with one. Their throughput is the ceiling of one RPC (or one stream message)
per event in Python on this machine.

    python -m scripts.echo_server --listen 127.0.0.1:50099
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc


def canned(event: pb.ActivityEvent) -> pb.ActivityResult:
    reason = "Text message sent: +2"
    result = pb.ActivityResult(
        event_id=event.event_id, outcome=pb.AWARDED, points=2, balance=42, reason=reason
    )
    result.credits.add(
        user_id=event.user_id,
        role=pb.ACTOR,
        outcome=pb.AWARDED,
        points=2,
        balance=42,
        reason=reason,
    )
    return result


class Echo(pb_grpc.PointsServiceServicer):
    async def RecordActivity(self, request: pb.ActivityEvent, context: Any) -> pb.ActivityResult:
        return canned(request)

    async def RecordActivities(
        self, request: pb.RecordActivitiesRequest, context: Any
    ) -> pb.RecordActivitiesResponse:
        return pb.RecordActivitiesResponse(results=[canned(e) for e in request.events])

    async def StreamActivities(self, request_iterator: Any, context: Any) -> Any:
        async for event in request_iterator:
            yield canned(event)


async def main(listen: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_PointsServiceServicer_to_server(Echo(), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(listen)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50099")
    import uvloop

    uvloop.run(main(parser.parse_args().listen))
