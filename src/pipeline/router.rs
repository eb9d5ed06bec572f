//! Routing: the longest matching path prefix picks the route; its method list may refuse.

use http::{HeaderValue, Method};

use crate::config::Route;

/// Routes sorted for longest-prefix matching, with each route's `Allow` header made once.
#[derive(Debug)]
pub struct Router {
    /// (route index, path), longest path first.
    by_length: Vec<(usize, String)>,
    allow: Vec<Option<HeaderValue>>,
}

/// What routing decided for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed<'a> {
    Route(usize),
    NotFound,
    /// The path matched route `0` but the method is not one it takes.
    MethodNotAllowed(usize, &'a HeaderValue),
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let mut by_length: Vec<(usize, String)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.path.clone()))
            .collect();
        by_length.sort_by_key(|(_, p)| std::cmp::Reverse(p.len()));
        let allow = routes.iter().map(allow_header).collect();
        Router { by_length, allow }
    }

    pub fn route(&self, routes: &[Route], method: &Method, path: &str) -> Routed<'_> {
        let Some(&(i, _)) = self
            .by_length
            .iter()
            .find(|(_, p)| path.starts_with(p.as_str()))
        else {
            return Routed::NotFound;
        };
        match &self.allow[i] {
            Some(allow) if !allows(&routes[i].methods, method) => {
                Routed::MethodNotAllowed(i, allow)
            }
            _ => Routed::Route(i),
        }
    }
}

/// A route that allows GET also allows HEAD, as HTTP servers do.
fn allows(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (method == Method::HEAD && methods.contains(&Method::GET))
}

fn allow_header(route: &Route) -> Option<HeaderValue> {
    if route.methods.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
    if route.methods.contains(&Method::GET) && !route.methods.contains(&Method::HEAD) {
        names.push("HEAD");
    }
    HeaderValue::from_str(&names.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn routes() -> Vec<Route> {
        let src = r#"
[upstreams.api]
targets = ["http://127.0.0.1:1"]
[[routes]]
path = "/"
[[routes]]
path = "/v1/reports"
methods = ["GET"]
[[routes]]
path = "/v1"
"#;
        Config::parse(src, &Overrides::default()).unwrap().routes
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = routes();
        let router = Router::new(&routes);
        assert_eq!(
            router.route(&routes, &Method::GET, "/v1/reports/7"),
            Routed::Route(1)
        );
        assert_eq!(
            router.route(&routes, &Method::GET, "/v1/candidates"),
            Routed::Route(2)
        );
        assert_eq!(
            router.route(&routes, &Method::GET, "/other"),
            Routed::Route(0)
        );
        assert_eq!(
            router.route(&routes, &Method::HEAD, "/v1/reports"),
            Routed::Route(1)
        );
    }

    #[test]
    fn other_methods_get_the_allow_list() {
        let routes = routes();
        let router = Router::new(&routes);
        match router.route(&routes, &Method::POST, "/v1/reports") {
            Routed::MethodNotAllowed(1, allow) => assert_eq!(allow, "GET, HEAD"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_match_is_not_found() {
        let mut routes = routes();
        routes.remove(0);
        let router = Router::new(&routes);
        assert_eq!(
            router.route(&routes, &Method::GET, "/health"),
            Routed::NotFound
        );
    }
}
