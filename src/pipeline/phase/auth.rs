//! The auth phase: under `auth.mode = "api_keys"`, the key must be known (401) and have the
//! route's scopes (403), behind the guard that makes guessing keys slow: a client that failed
//! too often is refused (429) before its key is even looked at.

use http::HeaderMap;

use super::{Ctx, Refused, shown};
use crate::config::AuthMode;
use crate::pipeline::{Caller, Proxy, credentials};
use crate::problem::Problem;

pub(super) async fn check(ctx: &mut Ctx<'_>, headers: &HeaderMap) -> Result<(), Refused> {
    let app = &*ctx.proxy.app;
    let route = &app.config.routes[ctx.route];
    match authenticate(ctx.proxy, &route.scopes, &ctx.caller(headers)).await {
        Ok(who) => {
            (ctx.who, ctx.rec.key) = (who, who);
            Ok(())
        }
        Err(problem) => {
            let policy = match problem {
                // The failed-credentials guard's 429: its own standing is what counts.
                Problem::RateLimited { .. } => app.limits.auth_failures(),
                // A known key: the policy its requests count under.
                Problem::MissingScope { key, .. } => {
                    app.config.auth.keys[key].policy.or(route.policy)
                }
                _ => shown(app, route.policy),
            };
            Err(Refused { policy, problem })
        }
    }
}

/// Who presents itself, with `scopes` required: the index of its `[[auth.keys]]` entry, or
/// `None` under `auth.mode = "none"`. Failed checks are counted against the client's address.
pub async fn authenticate(
    proxy: &Proxy,
    scopes: &[String],
    caller: &Caller<'_>,
) -> Result<Option<usize>, Problem> {
    let app = &*proxy.app;
    if app.config.auth.mode == AuthMode::None {
        return Ok(None);
    }
    app.limits.guard_auth(&app.config, caller).await?;
    let (headers, cert) = (caller.headers, caller.cert);
    match credentials::authenticate(&app.config.auth, &app.keys, scopes, headers, cert) {
        Err(p @ (Problem::MissingCredentials | Problem::UnknownCredentials)) => {
            app.limits.auth_failed(&app.config, caller).await;
            Err(p)
        }
        other => other,
    }
}
