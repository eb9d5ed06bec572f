//! `[telemetry]`: where traces go, how many are kept, and the service name they carry —
//! checked into [`Telemetry`]. Off unless `otlp_endpoint` is set.

use http::Uri;
use serde::Deserialize;
use toml::Spanned;

use super::error::Errors;
pub use crate::telemetry::Telemetry;

/// `[telemetry]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    pub otlp_endpoint: Spanned<String>,
    pub sample_ratio: Spanned<f64>,
    pub service_name: Spanned<String>,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            otlp_endpoint: Spanned::new(0..0, String::new()),
            sample_ratio: Spanned::new(0..0, 0.05),
            service_name: Spanned::new(0..0, "sluice".into()),
        }
    }
}

pub(super) fn check(t: &Raw, errs: &mut Errors) -> Telemetry {
    let ratio = *t.sample_ratio.get_ref();
    if !(0.0..=1.0).contains(&ratio) {
        let msg = format!("{ratio} is not a share between 0 and 1");
        errs.push("telemetry.sample_ratio", t.sample_ratio.span(), msg);
    }
    if t.service_name.get_ref().trim().is_empty() {
        let span = t.service_name.span();
        errs.push("telemetry.service_name", span, "must not be empty");
    }
    let endpoint = t.otlp_endpoint.get_ref();
    let traces_url = if endpoint.is_empty() {
        None
    } else {
        traces_url(endpoint).or_else(|| {
            let msg = format!(
                "{endpoint:?} is not an http:// URL like \"http://otel-collector:4318\" \
                 (\"\" turns traces off)"
            );
            errs.push("telemetry.otlp_endpoint", t.otlp_endpoint.span(), msg);
            None
        })
    };
    Telemetry {
        traces_url,
        sample_ratio: ratio,
        service_name: t.service_name.get_ref().clone(),
    }
}

/// The traces path under an OTLP/HTTP endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT takes it.
/// Only plain HTTP: traces go to a collector or agent beside sluice.
fn traces_url(endpoint: &str) -> Option<Uri> {
    let uri: Uri = endpoint.parse().ok()?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() || uri.query().is_some() {
        return None;
    }
    let base = endpoint.trim_end_matches('/');
    format!("{base}/v1/traces").parse().ok()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    fn parse(telemetry: &str) -> Result<Config, crate::config::ConfigError> {
        let overrides = Overrides {
            upstreams: vec!["http://127.0.0.1:3000".into()],
            ..Overrides::default()
        };
        Config::parse(&format!("[telemetry]\n{telemetry}"), &overrides)
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        let off = parse("").unwrap().telemetry;
        assert_eq!(off.traces_url, None);
        assert_eq!(
            (off.sample_ratio, off.service_name.as_str()),
            (0.05, "sluice")
        );
        let on = parse("otlp_endpoint = \"http://collector:4318/\"\nsample_ratio = 1.0")
            .unwrap()
            .telemetry;
        let url = on.traces_url.unwrap();
        assert_eq!(url.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(on.sample_ratio, 1.0);
    }

    #[test]
    fn a_bad_telemetry_value_names_its_key_and_line() {
        for (text, key) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"https://collector\"",
                "telemetry.otlp_endpoint",
            ),
            ("sample_ratio = 1.5", "telemetry.sample_ratio"),
            ("sample_ratio = -0.1", "telemetry.sample_ratio"),
            ("service_name = \" \"", "telemetry.service_name"),
        ] {
            let e = parse(text).expect_err(text);
            let invalid = &e.invalid()[0];
            assert_eq!(
                (invalid.key.as_str(), invalid.line),
                (key, Some(2)),
                "{text}"
            );
        }
        let e = parse("sampling = 1").expect_err("unknown key");
        assert!(e.to_string().contains("sampling"), "{e}");
    }
}
