// A wasi:http handler in JavaScript, built with componentize-js (StarlingMonkey):
//   GET  /           -> 200 "Hello from JavaScript!"
//   POST /echo       -> 200, the request body byte for byte
//   GET  /status/NNN -> status NNN with header x-edgefn-example: javascript
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  if (request.method === "POST" && url.pathname === "/echo") {
    const body = await request.arrayBuffer();
    return new Response(body, {
      headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
    });
  }
  const status = url.pathname.match(/^\/status\/(\d{3})$/);
  if (status) {
    return new Response(`status ${status[1]}\n`, {
      status: Number(status[1]),
      headers: { "x-edgefn-example": "javascript" },
    });
  }
  return new Response("Hello from JavaScript!\n", {
    headers: { "content-type": "text/plain" },
  });
}
