//! OpenTelemetry settings: the standard `OTEL_*` variables live-ai decides on
//! itself, read with the other settings and failing fast with the variable's name.
//!
//! Export is off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
//! a per-signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT`), or
//! when `OTEL_SDK_DISABLED=true`. What is read here is passed to the SDK
//! explicitly, so tests can set it without touching the process environment;
//! the variables not read here (the metrics exporter's headers and
//! compression, and over gRPC `OTEL_BSP_EXPORT_TIMEOUT`, …) the SDK reads
//! itself. Traces over http/protobuf go through live-ai's own span processor,
//! so their headers, timeout and compression are read here, and the batch
//! variables for both protocols.

use std::time::Duration;

use super::settings::{Secret, SettingsError, Source};

/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "live-ai";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the specification's default.
    HttpProtobuf,
    Grpc,
}

/// `OTEL_TRACES_SAMPLER` with its `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// Where and how telemetry is exported; `None` in [`TelemetrySettings::export`]
/// when it is off.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    pub protocol: OtlpProtocol,
    /// The traces endpoint, used verbatim (`None`: traces are not exported).
    pub traces_endpoint: Option<String>,
    /// The metrics endpoint, used verbatim (`None`: metrics are not exported).
    pub metrics_endpoint: Option<String>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms): how often ended spans are sent.
    pub batch_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting to be sent at most; more are dropped (and counted).
    pub max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub max_batch: usize,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms).
    pub metric_interval: Duration,
    pub sampler: SamplerSetting,
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`:
    /// sent with each export of spans (e.g. a hosted backend's API key).
    pub traces_headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (ms):
    /// how long one export of spans may take.
    pub traces_timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`
    /// (ms): how long one export of metrics may take (over http/protobuf the
    /// client is live-ai's, `telemetry::chunk_gaps`).
    pub metrics_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub export: Option<OtlpExport>,
    /// `OTEL_SERVICE_NAME`, else `service.name` of the resource attributes, else `live-ai`.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, `service.name` left out.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`: prompt and answer text
    /// on the GenAI spans. Off by default: they are a learner's words.
    pub capture_content: bool,
    /// `TELEMETRY_PRINCIPAL_SALT`: the salt of the principal's hash on spans. Unset,
    /// a random one per process: hashes then match within a process only.
    pub principal_salt: Option<Secret>,
}

impl TelemetrySettings {
    pub(super) fn read(src: &Source<'_>) -> Result<Self, SettingsError> {
        let resource_attributes = match src.raw("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(raw) => parse_pairs(&raw).ok_or(SettingsError {
                variable: "OTEL_RESOURCE_ATTRIBUTES",
                value: raw,
                expected: "comma-separated key=value pairs (values percent-encoded)".into(),
            })?,
        };
        let service_name = src
            .raw("OTEL_SERVICE_NAME")
            .or_else(|| resource_attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
        let resource_attributes = resource_attributes.into_iter().filter(|(k, _)| k != "service.name").collect();
        let disabled = src.flag("OTEL_SDK_DISABLED", false)?;
        let export = if disabled { None } else { read_export(src)? };
        Ok(Self {
            export,
            service_name,
            resource_attributes,
            capture_content: src.flag("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", false)?,
            principal_salt: src.secret("TELEMETRY_PRINCIPAL_SALT"),
        })
    }
}

fn read_export(src: &Source<'_>) -> Result<Option<OtlpExport>, SettingsError> {
    let protocol = |variable: &'static str, default| {
        src.choice(variable, default, &[("http/protobuf", OtlpProtocol::HttpProtobuf), ("grpc", OtlpProtocol::Grpc)])
    };
    let protocol = protocol("OTEL_EXPORTER_OTLP_PROTOCOL", OtlpProtocol::HttpProtobuf)?;
    let base = src.raw("OTEL_EXPORTER_OTLP_ENDPOINT");
    // The generic endpoint is a base URL: http/protobuf appends each signal's
    // path; gRPC uses it as it is. A per-signal endpoint is used verbatim.
    let endpoint = |variable: &'static str, path: &str| -> Result<Option<String>, SettingsError> {
        let url = match src.raw(variable) {
            Some(url) => url,
            None => match (&base, protocol) {
                (None, _) => return Ok(None),
                (Some(base), OtlpProtocol::Grpc) => base.clone(),
                (Some(base), OtlpProtocol::HttpProtobuf) => format!("{}/{path}", base.trim_end_matches('/')),
            },
        };
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(Some(url))
        } else {
            let variable = if src.raw(variable).is_some() { variable } else { "OTEL_EXPORTER_OTLP_ENDPOINT" };
            Err(SettingsError { variable, value: url, expected: "an http:// or https:// URL".into() })
        }
    };
    let traces_endpoint = endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces")?;
    let metrics_endpoint = endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "v1/metrics")?;
    if traces_endpoint.is_none() && metrics_endpoint.is_none() {
        return Ok(None);
    }
    let millis = |variable: &'static str, default: u64| -> Result<Duration, SettingsError> {
        match src.parse(variable, default, "a whole number of milliseconds, at least 1")? {
            0 => Err(SettingsError { variable, value: "0".into(), expected: "a whole number of milliseconds, at least 1".into() }),
            ms => Ok(Duration::from_millis(ms)),
        }
    };
    let count = |variable: &'static str, default: usize| -> Result<usize, SettingsError> {
        match src.parse(variable, default, "a whole number, at least 1")? {
            0 => Err(SettingsError { variable, value: "0".into(), expected: "a whole number, at least 1".into() }),
            n => Ok(n),
        }
    };
    // The per-signal variable wins over the generic one.
    let either = |signal: &'static str, generic: &'static str| if src.raw(signal).is_some() { signal } else { generic };
    let headers = either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS");
    let traces_headers = match src.raw(headers) {
        None => Vec::new(),
        Some(raw) => parse_pairs(&raw).ok_or(SettingsError {
            variable: headers,
            value: "(not shown: it may hold a secret)".into(),
            expected: "comma-separated key=value pairs (values percent-encoded)".into(),
        })?,
    };
    // Neither exporter is built with a compressor: refused by name, not by the SDK.
    for variable in ["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"] {
        if let Some(value) = src.raw(variable).filter(|value| value != "none") {
            return Err(SettingsError { variable, value, expected: "none (compression is not supported)".into() });
        }
    }
    let max_queue = count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
    let max_batch = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue);
    Ok(Some(OtlpExport {
        protocol,
        traces_endpoint,
        metrics_endpoint,
        batch_delay: millis("OTEL_BSP_SCHEDULE_DELAY", 5_000)?,
        max_queue,
        max_batch,
        metric_interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
        sampler: read_sampler(src)?,
        traces_headers,
        traces_timeout: millis(either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000)?,
        metrics_timeout: millis(either("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000)?,
    }))
}

fn read_sampler(src: &Source<'_>) -> Result<SamplerSetting, SettingsError> {
    use SamplerSetting as S;
    let ratio = || -> Result<f64, SettingsError> {
        let ratio: f64 = src.parse("OTEL_TRACES_SAMPLER_ARG", 1.0, "a sampling ratio from 0.0 to 1.0")?;
        if (0.0..=1.0).contains(&ratio) {
            Ok(ratio)
        } else {
            Err(SettingsError {
                variable: "OTEL_TRACES_SAMPLER_ARG",
                value: ratio.to_string(),
                expected: "a sampling ratio from 0.0 to 1.0".into(),
            })
        }
    };
    // Which sampler first; the ratio is read only by the samplers that take one.
    #[derive(Clone, Copy)]
    enum Kind {
        On,
        Off,
        Ratio,
        ParentOn,
        ParentOff,
        ParentRatio,
    }
    let kind = src.choice(
        "OTEL_TRACES_SAMPLER",
        Kind::ParentOn,
        &[
            ("always_on", Kind::On),
            ("always_off", Kind::Off),
            ("traceidratio", Kind::Ratio),
            ("parentbased_always_on", Kind::ParentOn),
            ("parentbased_always_off", Kind::ParentOff),
            ("parentbased_traceidratio", Kind::ParentRatio),
        ],
    )?;
    Ok(match kind {
        Kind::On => S::AlwaysOn,
        Kind::Off => S::AlwaysOff,
        Kind::Ratio => S::TraceIdRatio(ratio()?),
        Kind::ParentOn => S::ParentBasedAlwaysOn,
        Kind::ParentOff => S::ParentBasedAlwaysOff,
        Kind::ParentRatio => S::ParentBasedTraceIdRatio(ratio()?),
    })
}

/// `k=v,k2=v2` with percent-encoded values (the W3C Baggage format the
/// specification uses for `OTEL_RESOURCE_ATTRIBUTES`); `None` when malformed.
fn parse_pairs(raw: &str) -> Option<Vec<(String, String)>> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| Some((key.to_owned(), percent_decode(value.trim())?)))?
        })
        .collect()
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::from_pairs;

    fn read(vars: &[(&str, &str)]) -> Result<TelemetrySettings, SettingsError> {
        from_pairs(vars).map(|s| s.telemetry)
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_the_service_is_live_ai() {
        let settings = read(&[]).unwrap();
        assert!(settings.export.is_none());
        assert_eq!(settings.service_name, "live-ai");
        assert!(!settings.capture_content);
    }

    #[test]
    fn the_base_endpoint_gets_each_signals_path_over_http_and_is_kept_over_grpc() {
        let http = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap().export.unwrap();
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(http.traces_endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(http.metrics_endpoint.as_deref(), Some("http://collector:4318/v1/metrics"));
        let grpc = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .unwrap()
            .export
            .unwrap();
        assert_eq!(grpc.traces_endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn a_per_signal_endpoint_is_used_verbatim_and_alone_turns_that_signal_on() {
        let export = read(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/custom")]).unwrap().export.unwrap();
        assert_eq!(export.traces_endpoint.as_deref(), Some("http://tempo:4318/custom"));
        assert_eq!(export.metrics_endpoint, None);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign"),
        ];
        for (variable, value) in cases {
            let error = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), (variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable);
        }
        let error = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let error = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "OTEL_TRACES_SAMPLER_ARG");
    }

    #[test]
    fn the_traces_headers_and_timeout_prefer_the_per_signal_variable() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let export = read(&[base]).unwrap().export.unwrap();
        assert!(export.traces_headers.is_empty());
        assert_eq!(export.traces_timeout, Duration::from_secs(10));
        let export =
            read(&[base, ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc%3D,x-team=blocks"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])
                .unwrap()
                .export
                .unwrap();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(export.traces_headers, [pair("x-api-key", "abc="), pair("x-team", "blocks")]);
        assert_eq!(export.traces_timeout, Duration::from_millis(2500));
        let export = read(&[
            base,
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=generic"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=traces"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
        ])
        .unwrap()
        .export
        .unwrap();
        assert_eq!(export.traces_headers, [pair("x-api-key", "traces")]);
        assert_eq!(export.traces_timeout, Duration::from_millis(700));
        assert_eq!(export.metrics_timeout, Duration::from_millis(2500));
        let export =
            read(&[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"), ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "900")]).unwrap().export.unwrap();
        assert_eq!((export.metrics_timeout, export.traces_timeout), (Duration::from_millis(900), Duration::from_millis(2500)));
    }

    #[test]
    fn the_batch_settings_take_one_as_their_least_refuse_zero_and_keep_a_batch_within_the_queue() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let export = read(&[base]).unwrap().export.unwrap();
        assert_eq!((export.batch_delay, export.max_queue, export.max_batch), (Duration::from_secs(5), 2048, 512));
        let least = [("OTEL_BSP_SCHEDULE_DELAY", "1"), ("OTEL_BSP_MAX_QUEUE_SIZE", "1"), ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")];
        let export = read(&[&[base][..], &least].concat()).unwrap().export.unwrap();
        assert_eq!((export.batch_delay, export.max_queue, export.max_batch), (Duration::from_millis(1), 1, 1));
        for variable in ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] {
            assert_eq!(read(&[base, (variable, "0")]).unwrap_err().variable, variable);
        }
    }

    #[test]
    fn malformed_headers_and_compression_name_their_variable_and_hide_the_headers() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let error = read(&[base, ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization")]).unwrap_err();
        assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_TRACES_HEADERS");
        assert!(!error.value.contains("authorization"));
        assert_eq!(read(&[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).unwrap_err().variable, "OTEL_EXPORTER_OTLP_COMPRESSION");
        assert!(read(&[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]).is_ok());
        assert_eq!(read(&[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]).unwrap_err().variable, "OTEL_EXPORTER_OTLP_TIMEOUT");
    }

    #[test]
    fn the_service_name_comes_from_its_variable_then_the_resource_attributes() {
        let settings = read(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=blocks,deployment.environment.name=prod%20eu")]).unwrap();
        assert_eq!(settings.service_name, "blocks");
        assert_eq!(settings.resource_attributes, [("deployment.environment.name".to_owned(), "prod eu".to_owned())]);
        let settings = read(&[("OTEL_SERVICE_NAME", "tutor"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=blocks")]).unwrap();
        assert_eq!(settings.service_name, "tutor");
    }

    #[test]
    fn the_sampler_takes_its_ratio_and_the_sdk_can_be_disabled() {
        let export = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ])
        .unwrap()
        .export
        .unwrap();
        assert_eq!(export.sampler, SamplerSetting::ParentBasedTraceIdRatio(0.1));
        assert!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]).unwrap().export.is_none());
    }
}
