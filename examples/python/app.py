"""A wasi:http handler in Python, built with componentize-py:

    GET  /           -> 200 "Hello from Python!"
    POST /echo       -> 200, the request body byte for byte
    GET  /status/NNN -> status NNN with header x-edgefn-example: python
"""

import re

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

STATUS_PATH = re.compile(r"^/status/(\d{3})$")
# wasi:io output streams take at most 4,096 bytes per blocking write.
WRITE_CHUNK = 4096


def read_body(request: IncomingRequest) -> bytes:
    chunks = []
    with request.consume() as body:
        with body.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(65536))
                except Err as error:
                    if isinstance(error.value, StreamError_Closed):
                        break
                    raise
    return b"".join(chunks)


def respond(out: ResponseOutparam, status: int, headers: list, body: bytes) -> None:
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(body), WRITE_CHUNK):
            stream.blocking_write_and_flush(body[start : start + WRITE_CHUNK])
    OutgoingBody.finish(outgoing, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?", 1)[0]
        if isinstance(request.method(), Method_Post) and path == "/echo":
            content_type = request.headers().get("content-type")
            body = read_body(request)
            kind = content_type[0] if content_type else b"application/octet-stream"
            respond(response_out, 200, [("content-type", kind)], body)
            return
        status = STATUS_PATH.match(path)
        if status:
            code = int(status.group(1))
            respond(
                response_out,
                code,
                [("x-edgefn-example", b"python")],
                f"status {code}\n".encode(),
            )
            return
        respond(
            response_out,
            200,
            [("content-type", b"text/plain")],
            b"Hello from Python!\n",
        )
