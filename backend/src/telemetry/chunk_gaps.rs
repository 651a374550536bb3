//! `gen_ai.client.operation.time_per_output_chunk` over http/protobuf,
//! aggregated by live-ai itself: a histogram per provider, its buckets, count,
//! sum, min and max updated under one lock per batch of gaps (the engine tells
//! a call's gaps 7 at a time), where the SDK's histogram takes a lock and
//! searches its buckets per value — the largest per-chunk cost left
//! (bench/RESULTS.md, issue 24). The SDK records one value per call and cannot
//! take a histogram aggregated elsewhere, so the histogram travels in the same
//! request as the SDK's metrics, appended to it: [`WithChunkGaps`] is the HTTP
//! client of the OTLP crate's metric exporter, and adds to each request's body
//! the bytes of a second `ExportMetricsServiceRequest` holding this histogram.
//! Protobuf appends repeated fields when messages are concatenated, so the
//! collector reads one request with one more `ResourceMetrics` (the same
//! resource, live-ai's scope). Cumulative, like the SDK's.
//!
//! Over gRPC the SDK's histogram records the gaps (the tonic exporter has no
//! such hook): see `genai::PerChunk`.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::transform::common::tonic::{Attributes, ResourceAttributesWithSchema};
use opentelemetry_sdk::Resource;
use prost::Message;

use super::span_proto::nanos;

pub const NAME: &str = "gen_ai.client.operation.time_per_output_chunk";
pub const UNIT: &str = "s";
pub const DESCRIPTION: &str = "Time between the end of one output chunk and the end of the next, after the first.";
/// The bucket boundaries the conventions advise, in seconds.
pub const BOUNDS: [f64; 13] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];

/// [`BOUNDS`] in microseconds, the unit gaps are recorded in: a gap finds its
/// bucket by integer comparisons, from the smallest (where most gaps fall).
const BOUNDS_MICROS: [u32; BOUNDS.len()] = {
    let mut micros = [0; BOUNDS.len()];
    let mut i = 0;
    while i < BOUNDS.len() {
        micros[i] = (BOUNDS[i] * 1e6) as u32;
        i += 1;
    }
    micros
};

/// One provider's histogram: its attributes, when it began, what it holds.
pub struct ChunkGaps {
    attributes: Vec<KeyValue>,
    started: u64,
    buckets: Mutex<Buckets>,
}

/// In microseconds, converted to seconds when exported.
#[derive(Clone, Copy)]
struct Buckets {
    counts: [u64; BOUNDS.len() + 1],
    count: u64,
    sum: u64,
    min: u32,
    max: u32,
}

impl ChunkGaps {
    /// Records `gaps` (microseconds) under one lock.
    pub fn record(&self, gaps: &[u32]) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for &gap in gaps {
            // A gap on a bound belongs to that bound's bucket.
            let bucket = BOUNDS_MICROS.iter().position(|&bound| gap <= bound).unwrap_or(BOUNDS.len());
            buckets.counts[bucket] += 1;
            buckets.count += 1;
            buckets.sum += u64::from(gap);
            buckets.min = buckets.min.min(gap);
            buckets.max = buckets.max.max(gap);
        }
    }

    fn point(&self, now: u64) -> Option<HistogramDataPoint> {
        let buckets = *self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let seconds = |micros: u64| micros as f64 / 1e6;
        (buckets.count > 0).then(|| HistogramDataPoint {
            attributes: Attributes::from(self.attributes.iter().cloned()).0,
            start_time_unix_nano: self.started,
            time_unix_nano: now,
            count: buckets.count,
            sum: Some(seconds(buckets.sum)),
            bucket_counts: buckets.counts.to_vec(),
            explicit_bounds: BOUNDS.to_vec(),
            min: Some(seconds(buckets.min.into())),
            max: Some(seconds(buckets.max.into())),
            ..Default::default()
        })
    }
}

/// Every provider's histogram in this process, by attributes: apps built in
/// one process with the same provider share one.
static SERIES: LazyLock<Mutex<Vec<Arc<ChunkGaps>>>> = LazyLock::new(Default::default);

/// The histogram of the provider with `attributes`.
pub fn series(attributes: &[KeyValue]) -> Arc<ChunkGaps> {
    let mut series = SERIES.lock().unwrap();
    if let Some(found) = series.iter().find(|gaps| gaps.attributes == attributes) {
        return found.clone();
    }
    let empty = Buckets { counts: [0; BOUNDS.len() + 1], count: 0, sum: 0, min: u32::MAX, max: 0 };
    let gaps = Arc::new(ChunkGaps { attributes: attributes.to_vec(), started: nanos(SystemTime::now()), buckets: Mutex::new(empty) });
    series.push(gaps.clone());
    gaps
}

/// An `ExportMetricsServiceRequest` holding every histogram with a value so
/// far, under `resource` and `scope`; none when there is none.
fn encoded(resource: &ProtoResource, schema_url: &str, scope: &InstrumentationScope) -> Option<Vec<u8>> {
    let now = nanos(SystemTime::now());
    let points: Vec<HistogramDataPoint> = SERIES.lock().unwrap().iter().filter_map(|gaps| gaps.point(now)).collect();
    if points.is_empty() {
        return None;
    }
    let metric = Metric {
        name: NAME.into(),
        description: DESCRIPTION.into(),
        unit: UNIT.into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    };
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some((scope, None).into()),
                metrics: vec![metric],
                schema_url: scope.schema_url().unwrap_or_default().to_owned(),
            }],
            schema_url: schema_url.to_owned(),
        }],
    };
    Some(request.encode_to_vec())
}

/// The metric exporter's HTTP client: `inner`, each request's body followed by
/// the chunk-gap histograms.
#[derive(Debug)]
pub struct WithChunkGaps {
    inner: reqwest::blocking::Client,
    resource: ProtoResource,
    schema_url: String,
    scope: InstrumentationScope,
}

impl WithChunkGaps {
    pub fn new(inner: reqwest::blocking::Client, resource: &Resource, scope: InstrumentationScope) -> Self {
        let ResourceAttributesWithSchema { attributes, schema_url } = resource.into();
        let resource = ProtoResource { attributes: attributes.0, ..Default::default() };
        Self { inner, resource, schema_url: schema_url.unwrap_or_default(), scope }
    }
}

#[async_trait]
impl HttpClient for WithChunkGaps {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let Some(gaps) = encoded(&self.resource, &self.schema_url, &self.scope) else {
            return self.inner.send_bytes(request).await;
        };
        let (parts, body) = request.into_parts();
        let mut joined = Vec::with_capacity(body.len() + gaps.len());
        joined.extend_from_slice(&body);
        joined.extend_from_slice(&gaps);
        self.inner.send_bytes(Request::from_parts(parts, Bytes::from(joined))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lands_in_its_buckets_with_its_count_sum_min_and_max() {
        let gaps = series(&[KeyValue::new("test.series", "buckets")]);
        // 5 ms, exactly 10 ms (a bound belongs to its bucket), 80 ms, 3 s.
        gaps.record(&[5_000, 10_000, 80_000, 3_000_000]);
        let point = gaps.point(1).unwrap();
        assert_eq!(point.count, 4);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), 4);
        assert_eq!((point.bucket_counts[0], point.bucket_counts[4], point.bucket_counts[13]), (2, 1, 1));
        assert!((point.sum.unwrap() - 3.095).abs() < 1e-9);
        assert_eq!((point.min, point.max), (Some(0.005), Some(3.0)));
        assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
    }

    #[test]
    fn every_bound_in_microseconds_is_the_advised_bound() {
        for (micros, seconds) in BOUNDS_MICROS.iter().zip(BOUNDS) {
            assert_eq!(f64::from(*micros) / 1e6, seconds);
        }
        let gaps = series(&[KeyValue::new("test.series", "bounds")]);
        // Just above each bound: the next bucket.
        gaps.record(&BOUNDS_MICROS.map(|bound| bound + 1));
        assert_eq!(gaps.point(1).unwrap().bucket_counts, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn one_series_per_attribute_set() {
        let a = series(&[KeyValue::new("test.series", "shared")]);
        let b = series(&[KeyValue::new("test.series", "shared")]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &series(&[KeyValue::new("test.series", "other")])));
    }

    #[test]
    fn the_appended_bytes_decode_with_the_request_as_one_more_resource() {
        let gaps = series(&[KeyValue::new("test.series", "appended")]);
        gaps.record(&[20_000]);
        let resource = Resource::builder_empty().with_service_name("live-ai-test").build();
        let scope = InstrumentationScope::builder("live-ai").build();
        let client = WithChunkGaps::new(reqwest::blocking::Client::new(), &resource, scope);
        let first = ExportMetricsServiceRequest { resource_metrics: vec![ResourceMetrics::default()] }.encode_to_vec();
        let appended = encoded(&client.resource, &client.schema_url, &client.scope).unwrap();
        let joined = ExportMetricsServiceRequest::decode([first, appended].concat().as_slice()).unwrap();
        assert_eq!(joined.resource_metrics.len(), 2);
        let ours = &joined.resource_metrics[1];
        assert!(ours.resource.as_ref().unwrap().attributes.iter().any(|kv| kv.key == "service.name"));
        let metric = &ours.scope_metrics[0].metrics[0];
        assert_eq!((metric.name.as_str(), metric.unit.as_str()), (NAME, UNIT));
        let Some(metric::Data::Histogram(histogram)) = &metric.data else { panic!("not a histogram") };
        assert_eq!(histogram.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert!(histogram.data_points.iter().any(|point| point.attributes.iter().any(|kv| kv.key == "test.series")));
    }
}
