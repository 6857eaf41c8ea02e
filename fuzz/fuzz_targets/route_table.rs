#![no_main]
//! The gateway's route file parser and matcher.
//!
//! Any text either parses into a route table or is refused with an error (a reload keeps the old
//! table); it never panics the gateway. Any request run against a table that parsed finds one
//! route or none, and the upstream path of a match is computed without panicking.
//!
//! Input: `<route file>\0<method> <host|-> <path>\n<name>: <value>\n...`

use libfuzzer_sys::fuzz_target;
use stratus_gateway::route::routes::{RequestView, RouteTable};

fuzz_target!(|data: &[u8]| {
    // As the gateway does before it loads a table (a route's metric handles assert it).
    stratus_kit::metrics::install();
    let (file, request) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(file) = std::str::from_utf8(file) else {
        return;
    };
    let Ok(table) = RouteTable::parse(file) else {
        return;
    };

    let request = String::from_utf8_lossy(request);
    let mut lines = request.lines();
    let mut first = lines.next().unwrap_or_default().splitn(3, ' ');
    let method = http::Method::from_bytes(first.next().unwrap_or("GET").as_bytes())
        .unwrap_or(http::Method::GET);
    let host = first.next().filter(|h| !h.is_empty() && *h != "-");
    let path = first.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let view = RequestView {
        method: &method,
        path,
        host,
        headers: &headers,
    };
    if let Some(route) = table.find(&view) {
        let _ = route.upstream_path(path);
    }
});
