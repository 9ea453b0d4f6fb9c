"""A server interceptor for the INTERCEPTORS setting test: it tags every response."""

import grpc

calls: list[str] = []


class RecordingInterceptor(grpc.ServerInterceptor):
    """Records each method it sees and adds trailing metadata saying it ran."""

    def intercept_service(self, continuation, handler_call_details):
        calls.append(handler_call_details.method)
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def tagged(request, context):
            context.set_trailing_metadata((("x-intercepted", "yes"),))
            return inner(request, context)

        return handler._replace(unary_unary=tagged)


class AioRecordingInterceptor(grpc.aio.ServerInterceptor):
    """RecordingInterceptor for the asyncio server (grpc.aio's interceptor API)."""

    async def intercept_service(self, continuation, handler_call_details):
        calls.append(handler_call_details.method)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def tagged(request, context):
            context.set_trailing_metadata((("x-intercepted", "yes"),))
            return await inner(request, context)

        return handler._replace(unary_unary=tagged)
