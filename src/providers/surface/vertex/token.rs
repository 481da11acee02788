//! Short-lived OAuth2 access tokens minted from a Google service account's JSON key: a
//! JWT signed with the key (RS256, by `ring`) is exchanged at the key's `token_uri`
//! (RFC 7523's JWT bearer grant). The token is cached and minted again
//! [`REFRESH_AHEAD`] before it expires, or at once after the upstream said 401.

use std::time::{Duration, SystemTime};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A token is replaced this long before it expires, so no attempt carries one that
/// expires on the way.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// How long the assertion asks the token to live (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest a token exchange may take: it holds up the attempt that needed it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of a service-account key file airbag reads.
#[derive(Deserialize)]
struct ServiceAccountFile {
    client_email: String,
    private_key: String,
    token_uri: String,
}

/// A service account ready to sign assertions.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    key: RsaKeyPair,
}

impl ServiceAccount {
    /// Reads the key file's JSON; `source` names where it came from, for errors.
    pub fn from_json(json: &str, source: &str) -> Result<ServiceAccount, String> {
        let file: ServiceAccountFile = serde_json::from_str(json).map_err(|error| {
            format!("{source}: not a service-account key file ({error}); download a JSON key for the service account")
        })?;
        let der = pem_body(&file.private_key)
            .ok_or_else(|| format!("{source}: private_key is not a PEM \"PRIVATE KEY\""))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|error| format!("{source}: private_key is not an RSA PKCS#8 key: {error}"))?;
        Ok(ServiceAccount {
            client_email: file.client_email,
            token_uri: file.token_uri,
            key,
        })
    }

    /// The public half, DER `RSAPublicKey`, for a token endpoint that checks assertions.
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }

    /// A signed JWT asking `token_uri` for a token, issued at `now`.
    pub fn assertion(&self, now: SystemTime) -> Result<String, String> {
        let issued = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME.as_secs(),
        });
        let encode = |value: &Value| base64url(value.to_string().as_bytes());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the token request with the service account's key")?;
        Ok(format!("{signing_input}.{}", base64url(&signature)))
    }
}

pub fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The DER bytes of a PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

struct CachedToken {
    value: String,
    expires: Instant,
}

/// Access tokens of one service account, minted on demand and cached.
pub struct TokenSource {
    account: ServiceAccount,
    client: reqwest::Client,
    /// Held while a token is minted, so concurrent attempts wait for one exchange.
    cached: Mutex<Option<CachedToken>>,
}

impl TokenSource {
    pub fn new(account: ServiceAccount, client: reqwest::Client) -> TokenSource {
        TokenSource {
            account,
            client,
            cached: Mutex::new(None),
        }
    }

    /// A token with at least [`REFRESH_AHEAD`] left, minted when the cached one is older.
    pub async fn token(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.expires > Instant::now() + REFRESH_AHEAD
        {
            return Ok(token.value.clone());
        }
        let minted = self.exchange().await?;
        let value = minted.access_token.clone();
        *cached = Some(CachedToken {
            value: minted.access_token,
            expires: Instant::now() + Duration::from_secs(minted.expires_in),
        });
        Ok(value)
    }

    /// Forgets the cached token (the upstream refused it); true when there was one.
    pub fn forget(&self) -> bool {
        match self.cached.try_lock() {
            Ok(mut cached) => cached.take().is_some(),
            // A mint is under way: the next attempt gets its fresh token.
            Err(_) => true,
        }
    }

    async fn exchange(&self) -> Result<TokenAnswer, String> {
        let assertion = self.account.assertion(SystemTime::now())?;
        let form = format!(
            "grant_type={}&assertion={assertion}",
            percent_encoding::utf8_percent_encode(
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let response = self
            .client
            .post(&self.account.token_uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .timeout(EXCHANGE_TIMEOUT)
            .send()
            .await
            .map_err(|error| {
                format!(
                    "the token endpoint {} did not answer: {}",
                    self.account.token_uri,
                    error.without_url()
                )
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| {
            format!(
                "the token endpoint's answer broke off: {}",
                error.without_url()
            )
        })?;
        if !status.is_success() {
            let said: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(format!(
                "the token endpoint {} refused the service account {} with {status}: {said}",
                self.account.token_uri, self.account.client_email
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|error| format!("the token endpoint's answer has no access_token: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> ServiceAccount {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vertex-service-account.json"
        ))
        .unwrap();
        ServiceAccount::from_json(&json, "fixture").unwrap()
    }

    #[test]
    fn an_assertion_is_a_jwt_the_public_key_verifies() {
        let account = account();
        let jwt = account.assertion(SystemTime::now()).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], account.token_uri.as_str());
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.public_key(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(signed.as_bytes(), &signature).is_ok());
        assert!(public.verify(b"something else", &signature).is_err());
    }

    #[test]
    fn a_bad_key_file_says_what_is_wrong() {
        let error = ServiceAccount::from_json("{}", "env:SA").err().unwrap();
        assert!(
            error.contains("env:SA") && error.contains("service-account"),
            "{error}"
        );
        let error = ServiceAccount::from_json(
            r#"{"client_email":"a","private_key":"nope","token_uri":"http://t"}"#,
            "env:SA",
        )
        .err()
        .unwrap();
        assert!(error.contains("private_key"), "{error}");
    }
}
