//! STS's AssumeRoleWithWebIdentity over the awsQuery protocol, as the AWS SDKs' web identity
//! credential provider (EKS IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, and
//! `AWS_ENDPOINT_URL_STS` pointing here) calls it: a form-encoded `POST /`, answered in XML with
//! temporary credentials. Kinesis and Firehose requests signed with them carry
//! [`SESSION_TOKEN`] in `X-Amz-Security-Token`; `/stats` counts both.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The session token of the credentials every call gets.
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
