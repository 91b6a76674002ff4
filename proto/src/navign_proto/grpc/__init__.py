"""gRPC stubs generated from proto/protos/; do not edit.

Each ``.proto`` file gives a ``<name>_pb2`` module (messages, enums) and a
``<name>_pb2_grpc`` module (client stubs, servicer base classes):

- ``navign_proto.grpc.navign.gateway.v1.gateway_pb2``
- ``navign_proto.grpc.task_pb2``

Regenerate with:
    uv run --frozen python proto/scripts/generate_grpc.py
"""
