//! The log of every HTTP request the simulated API server answered, for tests that assert on access
//! patterns ("one paginated LIST per namespace, never a GET per pod").

use std::sync::{Arc, Mutex};

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; empty when there was none.
    pub query: String,
    /// The response status code (200 for a watch, which then streams).
    pub status: u16,
    /// The bearer token the request carried, if any.
    pub user: Option<String>,
}

impl RecordedRequest {
    /// A decoded query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find_map(|(k, v)| (percent_decode(k) == name).then(|| percent_decode(v)))
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|v| v == "true" || v == "1")
    }

    /// A GET of a collection (`.../pods`) that is not a watch.
    pub fn is_list_of(&self, plural: &str) -> bool {
        self.method == "GET" && !self.is_watch() && self.path.rsplit('/').next() == Some(plural)
    }

    /// A GET of one object of the type (`.../pods/<name>`).
    pub fn is_get_of(&self, plural: &str) -> bool {
        let mut segments = self.path.rsplit('/');
        let _name = segments.next();
        self.method == "GET" && segments.next() == Some(plural)
    }
}

impl std::fmt::Display for RecordedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        write!(f, " -> {}", self.status)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Shared, append-only request log.
#[derive(Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<RecordedRequest>>>);

impl RequestLog {
    pub fn record(&self, request: RecordedRequest) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }

    pub fn snapshot(&self) -> Vec<RecordedRequest> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_shapes() {
        let r = RecordedRequest {
            method: "GET".into(),
            path: "/api/v1/namespaces/ns/pods".into(),
            query: "labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=2&watch".into(),
            status: 200,
            user: None,
        };
        assert_eq!(r.param("labelSelector").as_deref(), Some("app=web,tier in (a)"));
        assert_eq!(r.param("limit").as_deref(), Some("2"));
        assert_eq!(r.param("watch").as_deref(), Some(""));
        assert!(r.is_list_of("pods") && !r.is_get_of("pods") && !r.is_watch());
        let get = RecordedRequest { path: "/api/v1/namespaces/ns/pods/p".into(), query: String::new(), ..r };
        assert!(get.is_get_of("pods") && !get.is_list_of("pods"));
        assert_eq!(get.to_string(), "GET /api/v1/namespaces/ns/pods/p -> 200");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
