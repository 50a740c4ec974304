"""Server reflection as stock clients expect it: ``grpc.reflection.v1`` and ``v1alpha``, and
every service, method and message symbol resolvable.

grpcio-reflection serves only ``v1alpha``, and looks a symbol up with the descriptor pool's
``FindFileContainingSymbol``, which does not know method names, so ``ghz --call
creditlink.peer.v1.CreditCheckService.CheckSubject`` and ``grpcurl describe`` of a method fail
against it. Here a method symbol resolves to the file of its service, and ``v1`` (the same
messages under another package, which ghz and grpcurl ask for first) is served by the same
servicer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE: Final = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE: Final = "grpc.reflection.v1.ServerReflection"
_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptors() -> None:
    """Put the ``v1`` reflection protocol into the default pool, so clients that describe it
    find it: it is ``v1alpha`` with the package (and the file name) changed."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for fld in message.field:
            if fld.HasField("type_name"):
                fld.type_name = fld.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


class _Reflection(ReflectionServicer):  # type: ignore[misc]
    """The library's servicer, with method symbols resolved to their service's file."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            service, _, method = fully_qualified_name.rpartition(".")
            try:
                known = method in self._pool.FindServiceByName(service).methods_by_name
            except KeyError:
                known = False
            if known:
                response = super()._file_containing_symbol(request, service)
        return response


def serve_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection for ``service_names`` (and for reflection itself) over v1 and v1alpha."""
    _add_v1_descriptors()
    servicer = _Reflection([*service_names, V1_SERVICE, V1ALPHA_SERVICE])

    async def info(
        requests: AsyncIterable[v1alpha_pb2.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[v1alpha_pb2.ServerReflectionResponse]:
        async for response in servicer.ServerReflectionInfo(requests, context):
            yield response

    for name in (V1_SERVICE, V1ALPHA_SERVICE):
        handler = grpc.stream_stream_rpc_method_handler(
            info,
            request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
            response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )
