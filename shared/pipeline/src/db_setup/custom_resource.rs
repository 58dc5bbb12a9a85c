//! CloudFormation custom resources: the request a Lambda-backed custom resource gets,
//! and the answer it must PUT to the request's presigned `ResponseURL`. A custom
//! resource that never answers holds its stack until the resource's `ServiceTimeout`.
//!
//! The PUT goes through hyper, hyper-util and hyper-rustls, which the AWS SDK already
//! links (no new HTTP stack in the binary), verified against the Mozilla roots (the
//! URL is an S3 one).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What CloudFormation asks of the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum RequestType {
    /// The resource is being created.
    Create,
    /// Its properties changed (or the stack is rolling back to old ones).
    Update,
    /// It is being deleted (or a failed create is being rolled back).
    Delete,
}

/// A custom resource request (the fields this project uses).
#[derive(Debug, Clone, Deserialize)]
pub struct CustomResourceRequest {
    /// Create, Update or Delete.
    #[serde(rename = "RequestType")]
    pub request_type: RequestType,
    /// Presigned S3 URL the answer is PUT to.
    #[serde(rename = "ResponseURL")]
    pub response_url: String,
    /// The stack.
    #[serde(rename = "StackId")]
    pub stack_id: String,
    /// This request.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// The resource's name in the template.
    #[serde(rename = "LogicalResourceId")]
    pub logical_resource_id: String,
    /// The id the resource answered on Create (absent on Create).
    #[serde(rename = "PhysicalResourceId", default)]
    pub physical_resource_id: Option<String>,
    /// The resource's properties in the template (ServiceToken included).
    #[serde(rename = "ResourceProperties", default)]
    pub resource_properties: Value,
}

impl CustomResourceRequest {
    /// A string property, if set.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.resource_properties.get(name).and_then(Value::as_str)
    }
}

/// SUCCESS or FAILED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ResponseStatus {
    /// The resource is in the requested state.
    Success,
    /// It is not; `Reason` says why and the stack rolls back.
    Failed,
}

/// The answer CloudFormation reads from the `ResponseURL` (at most 4,096 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomResourceResponse {
    /// SUCCESS or FAILED.
    pub status: ResponseStatus,
    /// Why (shown in the stack's events); never a secret.
    pub reason: String,
    /// The resource's id; a different one on Update means "replaced".
    pub physical_resource_id: String,
    /// From the request.
    pub stack_id: String,
    /// From the request.
    pub request_id: String,
    /// From the request.
    pub logical_resource_id: String,
    /// Whether `Data` is masked in the console.
    pub no_echo: bool,
    /// Values for `Fn::GetAtt` on the resource.
    pub data: Value,
}

/// Longest `Reason` sent: the whole body must stay under CloudFormation's 4,096 bytes.
pub const MAX_REASON_BYTES: usize = 2_000;

impl CustomResourceResponse {
    /// The answer to `request`.
    pub fn new(
        request: &CustomResourceRequest,
        status: ResponseStatus,
        reason: &str,
        physical_resource_id: &str,
        data: Value,
    ) -> Self {
        CustomResourceResponse {
            status,
            reason: truncate(reason, MAX_REASON_BYTES),
            physical_resource_id: physical_resource_id.to_string(),
            stack_id: request.stack_id.clone(),
            request_id: request.request_id.clone(),
            logical_resource_id: request.logical_resource_id.clone(),
            no_echo: false,
            data,
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Replaces every occurrence of the given secrets in `text` with `<redacted>`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    out
}

/// The answer could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("answering CloudFormation at {host}: {why}")]
pub struct ResponseError {
    /// The URL's host (never its query, which holds the signature).
    pub host: String,
    /// What failed, last attempt.
    pub why: String,
}

/// PUTs answers to `ResponseURL`s.
#[derive(Clone)]
pub struct Responder {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Responder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// Attempts at one PUT (a presigned URL may be PUT again; the last answer counts).
const ATTEMPTS: u32 = 3;
/// Longest wait for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

impl Responder {
    /// A client for HTTPS (Mozilla roots; plain HTTP only to a loopback address).
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Responder {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// PUTs `response` as JSON to `url` with an empty Content-Type (what the presigned
    /// URL was signed for), trying again on failure while `deadline` allows.
    pub async fn put(
        &self,
        url: &str,
        response: &CustomResourceResponse,
        deadline: Instant,
    ) -> Result<(), ResponseError> {
        let uri: hyper::Uri = url.parse().map_err(|e| ResponseError {
            host: "?".into(),
            why: format!("ResponseURL is not a URL: {e}"),
        })?;
        let host = uri.host().unwrap_or("?").to_string();
        let fail = |why: String| ResponseError {
            host: host.clone(),
            why,
        };
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(&host) => {}
            _ => return Err(fail("ResponseURL must be https".into())),
        }
        let body = Bytes::from(serde_json::to_vec(response).map_err(|e| fail(e.to_string()))?);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let request = hyper::Request::put(uri.clone())
                .header(hyper::header::CONTENT_TYPE, "")
                .header(hyper::header::CONTENT_LENGTH, body.len())
                .body(Full::new(body.clone()))
                .map_err(|e| fail(e.to_string()))?;
            let outcome =
                tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), self.client.request(request)).await;
            last = match outcome {
                Err(_) => "timed out".to_string(),
                Ok(Err(e)) => describe(&e),
                Ok(Ok(answer)) => {
                    let status = answer.status();
                    let text = answer
                        .into_body()
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                        .unwrap_or_default();
                    if status.is_success() {
                        return Ok(());
                    }
                    format!("HTTP {status}: {}", truncate(text.trim(), 300))
                }
            };
            tracing::warn!(attempt, host = %host, error = %last, "answering CloudFormation failed");
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
        Err(fail(if last.is_empty() {
            "no time left before the invocation's deadline".into()
        } else {
            last
        }))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(url: &str) -> CustomResourceRequest {
        serde_json::from_value(json!({
            "RequestType": "Create",
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:s-db-setup",
            "ResponseURL": url,
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/s/guid",
            "RequestId": "req-1",
            "LogicalResourceId": "DbSetup",
            "ResourceType": "Custom::TxpipeDbSetup",
            "ResourceProperties": {"ServiceToken": "arn:x", "Database": "txpipe", "Revision": "1"}
        }))
        .unwrap()
    }

    #[test]
    fn request_and_response_shapes() {
        let r = request("https://example.com/x?sig=1");
        assert_eq!(r.request_type, RequestType::Create);
        assert_eq!(r.physical_resource_id, None);
        assert_eq!(r.property("Database"), Some("txpipe"));
        let answer = CustomResourceResponse::new(
            &r,
            ResponseStatus::Failed,
            &"x".repeat(5000),
            "txpipe_app@txpipe",
            json!({}),
        );
        let body = serde_json::to_value(&answer).unwrap();
        assert_eq!(body["Status"], "FAILED");
        assert_eq!(body["PhysicalResourceId"], "txpipe_app@txpipe");
        assert_eq!(body["StackId"], r.stack_id.as_str());
        assert_eq!(body["RequestId"], "req-1");
        assert_eq!(body["LogicalResourceId"], "DbSetup");
        assert!(serde_json::to_vec(&answer).unwrap().len() < 4096);
    }

    #[test]
    fn redaction() {
        let secrets = vec!["hunter22".to_string(), "".to_string()];
        assert_eq!(
            redact("password hunter22 rejected", &secrets),
            "password <redacted> rejected"
        );
    }

    #[tokio::test]
    async fn put_is_a_plain_put_with_an_empty_content_type() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/cfn-response?X-Amz-Signature=abc",
            listener.local_addr().unwrap().port()
        );
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if seen.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let r = request(&url);
        let answer =
            CustomResourceResponse::new(&r, ResponseStatus::Success, "", "id", json!({"A": 1}));
        Responder::new()
            .put(&url, &answer, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        let seen = server.await.unwrap();
        let (head, body) = seen.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("PUT /cfn-response?X-Amz-Signature=abc HTTP/1.1"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("content-type: \r\n"),
            "{head}"
        );
        let sent: CustomResourceResponse = serde_json::from_str(body).unwrap();
        assert_eq!(sent, answer);
    }

    #[tokio::test]
    async fn only_https_leaves_the_machine_and_failures_are_reported() {
        let r = request("http://example.com/x");
        let answer = CustomResourceResponse::new(&r, ResponseStatus::Success, "", "id", json!({}));
        let soon = Instant::now() + Duration::from_secs(5);
        let err = Responder::new()
            .put("http://example.com/x?sig=secret", &answer, soon)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        assert!(!err.to_string().contains("sig=secret"));
        // Nothing listens there: every attempt fails, the error says so.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Responder::new()
            .put(&format!("http://127.0.0.1:{port}/x"), &answer, soon)
            .await
            .unwrap_err();
        assert_eq!(err.host, "127.0.0.1");
    }
}
