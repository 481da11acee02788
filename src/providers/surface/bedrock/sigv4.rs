//! AWS Signature Version 4 for Bedrock requests, by the `aws-sigv4` crate: what is
//! signed (method, URL, `content-type`, `host`, the body's hash, the time) and the
//! headers that carry the signature. The mock provider signs the same way with a known
//! secret to check what airbag sent.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// An AWS credential resolved from the environment.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(out, "AwsCredentials({}, <secret>)", self.access_key_id)
    }
}

/// What to sign.
pub struct Signable<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// Headers to sign besides `host` (derived from the URL when not listed).
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The headers that sign `request` for `service` in `region` at `time`:
/// `authorization`, `x-amz-date` and, with a session token, `x-amz-security-token`.
pub fn signature_headers(
    request: &Signable<'_>,
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity: Identity = Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "airbag-config",
    )
    .into();
    let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|error| format!("cannot sign the request: {error}"))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|error| format!("cannot sign the request: {error}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|error| format!("cannot sign the request: {error}"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// `20150830T123600Z` (the `x-amz-date` format) as a time.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 test suite, case `post-vanilla`: a POST to
    /// `example.amazonaws.com` with an empty body, signed at 2015-08-30T12:36:00Z for
    /// service `service` in `us-east-1` with the suite's example key.
    #[test]
    fn signs_the_aws_test_suite_post_vanilla_case() {
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: None,
        };
        let time = parse_amz_date("20150830T123600Z").unwrap();
        let request = Signable {
            method: "POST",
            url: "https://example.amazonaws.com/",
            headers: Vec::new(),
            body: b"",
        };
        let headers =
            signature_headers(&request, &credentials, "us-east-1", "service", time).unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(header("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );
        assert_eq!(header("x-amz-security-token"), None);
    }

    #[test]
    fn a_model_id_with_a_colon_is_signed_double_encoded() {
        // Bedrock's path carries the model id with `:` as `%3A`; SigV4 (for every
        // service but S3) encodes the path again, so the signature covers `%253A`. A
        // signer that skipped it would be refused by AWS but not by a mock that signs the
        // same way, so this pins the canonical form through the suite's own example.
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: Some("token".to_string()),
        };
        let time = parse_amz_date("20150830T123600Z").unwrap();
        let sign_path = |path: &str| {
            let url = format!("https://bedrock-runtime.us-east-1.amazonaws.com{path}");
            let request = Signable {
                method: "POST",
                url: &url,
                headers: vec![("content-type", "application/json")],
                body: b"{}",
            };
            signature_headers(&request, &credentials, "us-east-1", "bedrock", time).unwrap()
        };
        let encoded = sign_path("/model/anthropic.claude-v2%3A1/invoke");
        let literal = sign_path("/model/anthropic.claude-v2:1/invoke");
        assert_ne!(encoded, literal, "the encoded path is what gets signed");
        assert!(
            encoded
                .iter()
                .any(|(name, value)| name == "x-amz-security-token" && value == "token")
        );
    }

    #[test]
    fn amz_dates_parse_and_nonsense_does_not() {
        assert_eq!(
            parse_amz_date("19700101T000001Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(
            parse_amz_date("20150830T123600Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160))
        );
        for bad in ["", "2015-08-30", "20151330T123600Z", "20150830X123600Z"] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}
