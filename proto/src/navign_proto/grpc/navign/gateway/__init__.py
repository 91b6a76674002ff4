"""Generated gRPC stubs; do not edit.

Sources: proto/protos/. Regenerate with:
    uv run --frozen python proto/scripts/generate_grpc.py
"""
