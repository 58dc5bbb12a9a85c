//! AWS clients built once per container from the standard environment. Setting
//! `AWS_ENDPOINT_URL` points every client at a local endpoint (moto), as the SDKs do
//! natively; S3 then uses path-style addressing, which local servers need.

use aws_config::{BehaviorVersion, SdkConfig};

/// Shared AWS configuration plus the clients the pipeline uses.
#[derive(Clone, Debug)]
pub struct AwsClients {
    /// S3.
    pub s3: aws_sdk_s3::Client,
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The loaded configuration (region, credentials, endpoint).
    pub config: SdkConfig,
}

impl AwsClients {
    /// Loads region, credentials and endpoint the standard way.
    pub async fn from_env() -> Self {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        Self::from_config(config)
    }

    /// Clients for a local endpoint (moto) with dummy credentials.
    pub async fn local(endpoint: &str) -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "txpipe-local",
            ))
            .endpoint_url(endpoint)
            .load()
            .await;
        Self::from_config(config)
    }

    /// Clients from an explicit configuration.
    pub fn from_config(config: SdkConfig) -> Self {
        let local = config.endpoint_url().is_some();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(local)
                .build(),
        );
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        AwsClients {
            s3,
            dynamodb,
            config,
        }
    }
}
