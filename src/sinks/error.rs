//! Classifying AWS errors (Kinesis and Firehose), for whole calls and for single entries of a
//! PutRecords or PutRecordBatch result.
//!
//! Only codes known to be permanent are treated as permanent: anything else is retried, because a
//! retry costs time while a wrong "permanent" loses the record to the dead-letter file.

use std::fmt;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The stream, delivery stream or KMS refused for throughput: retry after a backoff.
    Throttled,
    /// 5xx, timeouts, connection failures, internal failures, unknown codes: retry after a backoff.
    Transient,
    /// Credentials rejected or missing: retried (the file is the buffer) but logged as an ERROR, since
    /// only an operator can fix it.
    Credentials,
    /// The request can never succeed as it is (access denied, stream not found, KMS key disabled,
    /// invalid argument): the records go to the dead-letter file.
    Permanent,
}

const THROTTLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "ThrottlingException",
    "LimitExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];

const PERMANENT_CODES: &[&str] = &[
    "AccessDeniedException",
    "ResourceNotFoundException",
    "InvalidArgumentException",
    "ValidationException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "KMSNotFoundException",
    "KMSOptInRequired",
];

const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
];

/// Classify a Kinesis error code, as found in a PutRecords entry or an error response.
pub fn classify_code(code: &str) -> ErrorClass {
    if THROTTLE_CODES.contains(&code) {
        ErrorClass::Throttled
    } else if PERMANENT_CODES.contains(&code) {
        ErrorClass::Permanent
    } else if CREDENTIAL_CODES.contains(&code) {
        ErrorClass::Credentials
    } else {
        ErrorClass::Transient
    }
}

/// A failed call, reduced to what the retry logic needs.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SendError {
    pub class: ErrorClass,
    /// The service's error code, or the kind of transport failure.
    pub code: String,
    pub message: String,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl SendError {
    pub fn is_retriable(&self) -> bool {
        self.class != ErrorClass::Permanent
    }

    pub fn is_throttle(&self) -> bool {
        self.class == ErrorClass::Throttled
    }

    /// The endpoint could not be reached: no connection, or no answer in time.
    pub fn is_unreachable(&self) -> bool {
        self.class == ErrorClass::Transient
            && matches!(self.code.as_str(), "DispatchFailure" | "Timeout")
    }

    pub fn from_sdk<E, R>(error: &SdkError<E, R>) -> SendError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        let transient = |code: &str| SendError {
            class: ErrorClass::Transient,
            code: code.to_string(),
            message: error_chain(error),
        };
        match error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown");
                let message = service.err().message().unwrap_or_default().to_string();
                let class = match classify_code(code) {
                    // A 5xx is a server-side problem whatever the code says.
                    ErrorClass::Permanent if is_server_error(service.raw()) => {
                        ErrorClass::Transient
                    }
                    class => class,
                };
                SendError {
                    class,
                    code: code.to_string(),
                    message,
                }
            }
            SdkError::TimeoutError(_) => transient("Timeout"),
            SdkError::DispatchFailure(_) => transient("DispatchFailure"),
            SdkError::ResponseError(_) => transient("ResponseError"),
            // Building the request failed; with a fixed request shape this is almost always missing
            // credentials or region, which an operator can fix without losing the records.
            SdkError::ConstructionFailure(_) => SendError {
                class: ErrorClass::Credentials,
                code: "ConstructionFailure".into(),
                message: error_chain(error),
            },
            _ => transient("Unknown"),
        }
    }
}

fn is_server_error<R: fmt::Debug>(raw: &R) -> bool {
    // The raw response type is generic here; its Debug output carries the status.
    let text = format!("{raw:?}");
    text.split("status: StatusCode(")
        .nth(1)
        .and_then(|rest| rest.get(..1))
        .is_some_and(|digit| digit == "5")
}

/// The error and its sources on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let table = [
            (
                "ProvisionedThroughputExceededException",
                ErrorClass::Throttled,
            ),
            ("KMSThrottlingException", ErrorClass::Throttled),
            ("InternalFailure", ErrorClass::Transient),
            ("ServiceUnavailable", ErrorClass::Transient),
            ("SomethingNew", ErrorClass::Transient),
            ("AccessDeniedException", ErrorClass::Permanent),
            ("ResourceNotFoundException", ErrorClass::Permanent),
            ("KMSDisabledException", ErrorClass::Permanent),
            ("KMSAccessDeniedException", ErrorClass::Permanent),
            ("InvalidArgumentException", ErrorClass::Permanent),
            ("UnrecognizedClientException", ErrorClass::Credentials),
            ("ExpiredTokenException", ErrorClass::Credentials),
        ];
        for (code, class) in table {
            assert_eq!(classify_code(code), class, "{code}");
        }
    }

    #[test]
    fn only_permanent_is_not_retriable() {
        let error = |class| SendError {
            class,
            code: String::new(),
            message: String::new(),
        };
        assert!(error(ErrorClass::Throttled).is_retriable());
        assert!(error(ErrorClass::Throttled).is_throttle());
        assert!(error(ErrorClass::Transient).is_retriable());
        assert!(error(ErrorClass::Credentials).is_retriable());
        assert!(!error(ErrorClass::Permanent).is_retriable());
        let transport = |code: &str| SendError {
            class: ErrorClass::Transient,
            code: code.into(),
            message: String::new(),
        };
        assert!(transport("DispatchFailure").is_unreachable());
        assert!(transport("Timeout").is_unreachable());
        assert!(!transport("InternalFailure").is_unreachable());
        assert!(!error(ErrorClass::Throttled).is_unreachable());
    }
}
