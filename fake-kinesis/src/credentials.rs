//! Temporary credentials, as the AWS SDKs' providers on EKS get them:
//! - STS's AssumeRoleWithWebIdentity over the awsQuery protocol (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE`,
//!   `AWS_ROLE_ARN`, and `AWS_ENDPOINT_URL_STS` pointing here): a form-encoded `POST /`, answered
//!   in XML;
//! - the container credentials endpoint (EKS Pod Identity, ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//!   set to `http://127.0.0.1:PORT/credentials`, `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`):
//!   `GET /credentials` with the token in `Authorization`, answered in JSON.
//!
//! Kinesis and Firehose requests signed with these credentials carry [`SESSION_TOKEN`] in
//! `X-Amz-Security-Token`; `/stats` counts the calls of each kind and those requests.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::Server;

/// The session token of the credentials every call of either kind gets.
pub const SESSION_TOKEN: &str = "fake-kinesis-web-identity-session";

/// Whether a request body is an STS call (awsQuery: form-encoded, with an `Action`).
pub fn is_sts(body: &[u8]) -> bool {
    body.starts_with(b"Action=") || body.windows(8).any(|w| w == b"&Action=")
}

/// The value of form field `name`, as sent (not percent-decoded).
fn field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Answers an STS call: AssumeRoleWithWebIdentity with a role and a token gets credentials that
/// expire in 2099 (HTTP 200); anything else gets STS's error for it (HTTP 400).
pub fn handle(body: &[u8]) -> Response {
    match credentials(body) {
        Ok(xml) => xml_response(StatusCode::OK, xml),
        Err((code, message)) => error(code, &message),
    }
}

fn credentials(body: &[u8]) -> Result<String, (&'static str, String)> {
    let body =
        std::str::from_utf8(body).map_err(|_| ("InvalidParameterValue", "not UTF-8".to_owned()))?;
    if field(body, "Action") != Some("AssumeRoleWithWebIdentity") {
        return Err((
            "InvalidAction",
            "only AssumeRoleWithWebIdentity is served here".to_owned(),
        ));
    }
    for required in ["RoleArn", "WebIdentityToken"] {
        if field(body, required).is_none_or(str::is_empty) {
            return Err(("MissingParameter", format!("the request has no {required}")));
        }
    }
    Ok(format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAFAKEKINESIS00001</AccessKeyId>
      <SecretAccessKey>fake-kinesis-secret</SecretAccessKey>
      <SessionToken>{SESSION_TOKEN}</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::000000000000:assumed-role/shipper/fake</Arn>
      <AssumedRoleId>AROAFAKEKINESIS:fake</AssumedRoleId>
    </AssumedRoleUser>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>fake-kinesis</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#
    ))
}

/// `GET /credentials`: the container credentials endpoint. A call without an `Authorization`
/// header is refused (the SDK sends the token it read from its token file).
pub async fn container(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    server
        .stats
        .container_credentials_calls
        .fetch_add(1, Relaxed);
    if headers
        .get(header::AUTHORIZATION)
        .is_none_or(|token| token.is_empty())
    {
        return (StatusCode::UNAUTHORIZED, "no Authorization token").into_response();
    }
    let body = serde_json::json!({
        "AccessKeyId": "ASIAFAKEKINESIS00002",
        "SecretAccessKey": "fake-kinesis-secret",
        "Token": SESSION_TOKEN,
        "Expiration": "2099-01-01T00:00:00Z",
    });
    crate::api::json_response(StatusCode::OK, body.to_string().into_bytes())
}

fn error(code: &str, message: &str) -> Response {
    let xml = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>fake-kinesis</RequestId>
</ErrorResponse>"#
    );
    xml_response(StatusCode::BAD_REQUEST, xml)
}

fn xml_response(status: StatusCode, xml: String) -> Response {
    let mut response = (status, xml).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_web_identity_call_with_a_role_and_a_token_gets_credentials() {
        let call = b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A0%3Arole%2Fr&RoleSessionName=s&WebIdentityToken=t";
        assert!(is_sts(call));
        assert!(!is_sts(br#"{"StreamName":"logs"}"#));
        assert_eq!(handle(call).status(), StatusCode::OK);
        let no_token = b"Action=AssumeRoleWithWebIdentity&RoleArn=r&WebIdentityToken=";
        assert_eq!(handle(no_token).status(), StatusCode::BAD_REQUEST);
        let other = b"Version=2011-06-15&Action=GetCallerIdentity";
        assert!(is_sts(other));
        assert_eq!(handle(other).status(), StatusCode::BAD_REQUEST);
    }
}
