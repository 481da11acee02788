//! Bedrock and Vertex mocks that check real credentials, and the provider sections that
//! point the gateway at them: a SigV4 secret the Bedrock mock signs with too, and a
//! service-account key file (the fixture, its `token_uri` at the Vertex mock).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use airbag::mock::cloud::CloudAuth;
use airbag::mock::{MockOptions, MockProvider};
use airbag::providers::surface::vertex::token::ServiceAccount;
use serde_json::{Value, json};

use super::mock_with;

pub const AWS_KEY_ID: &str = "AKIDAIRBAGTEST";
pub const AWS_SECRET: &str = "airbag/test+secret";

/// The environment variables the sections below refer to, Bedrock's part.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", AWS_KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
    ("AWS_SESSION_TOKEN", "session-token-1"),
];

pub fn fixture_account() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vertex-service-account.json"
    ))
    .expect("the service-account fixture")
}

/// A Bedrock mock that accepts requests signed with [`AWS_KEY_ID`] / [`AWS_SECRET`].
pub async fn bedrock_mock(name: &str) -> MockProvider {
    let cloud = CloudAuth {
        aws: HashMap::from([(AWS_KEY_ID.to_string(), AWS_SECRET.to_string())]),
        ..CloudAuth::default()
    };
    mock_with(
        name,
        MockOptions {
            cloud,
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await
}

/// A Vertex mock whose token endpoint trusts the fixture's service account.
pub struct VertexMock {
    pub mock: MockProvider,
    /// The key file the gateway reads (`env:VERTEX_SERVICE_ACCOUNT`); removed on drop.
    folder: tempfile::TempDir,
}

impl VertexMock {
    pub async fn start(name: &str, token_lifetime: Duration) -> VertexMock {
        let account = ServiceAccount::from_json(&fixture_account(), "fixture").expect("fixture");
        let cloud = CloudAuth {
            service_account: Some(Arc::new(account)),
            token_lifetime,
            ..CloudAuth::default()
        };
        let mock = mock_with(
            name,
            MockOptions {
                cloud,
                ..MockOptions::default()
            },
            Vec::new(),
        )
        .await;
        let folder = tempfile::tempdir().expect("temporary folder");
        let mut file: Value = serde_json::from_str(&fixture_account()).expect("fixture JSON");
        file["token_uri"] = json!(format!("http://{}/token", mock.addr));
        std::fs::write(folder.path().join("service-account.json"), file.to_string())
            .expect("key file written");
        VertexMock { mock, folder }
    }

    /// `("VERTEX_SERVICE_ACCOUNT", path)` for the gateway's environment.
    pub fn key_path(&self) -> String {
        self.folder
            .path()
            .join("service-account.json")
            .to_string_lossy()
            .to_string()
    }
}

/// A `bedrock` provider section signing with the `AWS_*` variables of [`AWS_ENV`].
pub fn bedrock_provider(name: &str, mock: &MockProvider, extra: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"http://{}\"\n\
         aws = {{ access_key_id = \"env:AWS_ACCESS_KEY_ID\", secret_access_key = \"env:AWS_SECRET_ACCESS_KEY\", session_token = \"env:AWS_SESSION_TOKEN\" }}\n{extra}\n",
        mock.addr
    )
}

/// A `vertex` provider section with the service account in `env:VERTEX_SERVICE_ACCOUNT`.
pub fn vertex_provider(name: &str, mock: &MockProvider, extra: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"vertex\"\nregion = \"us-east5\"\nproject = \"airbag-test\"\nbase_url = \"{}\"\n\
         service_account = \"env:VERTEX_SERVICE_ACCOUNT\"\n{extra}\n",
        mock.base_url()
    )
}
