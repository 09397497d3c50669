//! A WASI preview 1 handler in the CGI convention: the request arrives in environment
//! variables and on stdin, the response leaves on stdout as `Status:`, headers, a blank
//! line and the body.

use std::io::{Read as _, Write as _};

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("read request body");
    if var("PATH_INFO") == "/fail" {
        eprintln!("failing on purpose");
        std::process::exit(3);
    }
    if var("PATH_INFO").ends_with("/smuggle") {
        // A hostile guest: its framing headers claim a 2-byte body, and the rest of its
        // output is a whole second response meant for the next client on the connection.
        print!(
            "Status: 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n\
             okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!"
        );
        return;
    }
    if var("PATH_INFO").ends_with("/chunked") {
        print!("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        return;
    }
    let text = format!(
        "cgi {} {} query={} body={}\n",
        var("REQUEST_METHOD"),
        var("PATH_INFO"),
        var("QUERY_STRING"),
        String::from_utf8_lossy(&body),
    );
    let mut stdout = std::io::stdout().lock();
    write!(
        stdout,
        "Status: 200 OK\r\nContent-Type: text/plain\r\nX-Cgi: yes\r\n\r\n{text}"
    )
    .expect("write response");
}
