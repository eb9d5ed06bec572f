//! The route phase: the longest matching prefix picks the route (404 if none); its method list
//! may refuse (405, with `Allow`).

use http::Request;

use super::{Ctx, Refused, shown};
use crate::body::Body;
use crate::pipeline::Routed;
use crate::problem::Problem;

pub(super) fn find(ctx: &mut Ctx<'_>, req: &Request<Body>) -> Result<(), Refused> {
    let app = &*ctx.proxy.app;
    let routes = &app.config.routes;
    match app.router.route(routes, req.method(), req.uri().path()) {
        Routed::Route(r) => {
            ctx.route = r;
            ctx.rec.route = r;
            Ok(())
        }
        Routed::NotFound => Err(Refused {
            policy: None,
            problem: Problem::NoRoute,
        }),
        Routed::MethodNotAllowed(r, allow) => Err(Refused {
            policy: shown(app, routes[r].policy),
            problem: Problem::MethodNotAllowed {
                allow: allow.clone(),
            },
        }),
    }
}
