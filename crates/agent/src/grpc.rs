//! The grpc executor: calls one unary method, `package.Service/Method`, on a server that offers gRPC server
//! reflection, so no `.proto` file is needed: the method's input and output types are learned from the server
//! (reflection v1, else v1alpha), the JSON `body` becomes the request message, and the response, as JSON, becomes
//! the output (Dkron's executor throws it away). The run succeeds when the call ends with `expectCode` (OK by
//! default); any other status fails it, its code and message in the output and the error.
//!
//! `https://` URLs use TLS: the server is checked against `tlsRootCAsFile` (else the web's root certificates), and
//! `tlsCertificateFile`/`tlsCertificateKeyFile` are presented when given. Channels (HTTP/2 connections, multiplexed)
//! are kept per address and TLS settings, and the descriptors learned per address and
//! service, so a job firing every second makes one reflection exchange, not one per run. Timeout and cancel abandon
//! the call: dropping it resets its HTTP/2 stream, which the server sees as a cancellation.

use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::capture::Capture;
use crate::config::{GRPC_STATUS_NAMES, GrpcConfig};
use crate::connections::Shared;
use crate::remote::{self, race};
use crate::spec::{Outcome, RunStatus};

/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Files one reflection exchange may fetch (a service's file and its imports).
const REFLECTION_FILES_MAX: usize = 256;

/// Channels by address, and the methods resolved by address and service.
pub(crate) struct GrpcClients {
    channels: Shared<Channel>,
    methods: Mutex<std::collections::HashMap<String, DescriptorPool>>,
}

/// Pools kept at most (one per address and service); past it the cache starts over.
const POOLS_MAX: usize = 256;

impl GrpcClients {
    pub fn new() -> GrpcClients {
        GrpcClients { channels: Shared::new(), methods: Mutex::new(std::collections::HashMap::new()) }
    }
}

pub(crate) async fn run(
    clients: &GrpcClients,
    config: GrpcConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let ended = race(call(clients, &config, &mut capture), config.timeout, cancel).await;
    match ended {
        remote::Ended::Done(Ok(None)) => capture.into_outcome(RunStatus::Succeeded, Some(0), None),
        remote::Ended::Done(Ok(Some((code, error)))) => {
            let status = if code == config.expect_code { RunStatus::Succeeded } else { RunStatus::Failed };
            let error = (status == RunStatus::Failed).then_some(error);
            capture.into_outcome(status, Some(code), error)
        }
        other => remote::finish(capture, other.map(|r| r.map(drop)), config.timeout, &Default::default()),
    }
}

/// Make the call; `Ok(None)` for OK, `Ok(Some((code, message)))` for another status, `Err` when it could not be
/// made (unreachable, no reflection, unknown method, a body that does not fit the input type).
async fn call(
    clients: &GrpcClients,
    config: &GrpcConfig,
    capture: &mut Capture,
) -> Result<Option<(i32, String)>, String> {
    let channel = channel(clients, config).await?;
    let method = method(clients, &channel, config).await?;
    let mut deserializer = serde_json::Deserializer::from_str(&config.body);
    let request = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .map_err(|e| format!("body does not fit {}: {e}", method.input().full_name()))?;
    let mut request = tonic::Request::new(request);
    for (name, value) in &config.headers {
        let name = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("headers: '{name}' is not a gRPC metadata name"))?;
        let value = value.parse().map_err(|_| format!("headers: the value of '{name}' is not gRPC metadata"))?;
        request.metadata_mut().insert(name, value);
    }
    let path = format!("/{}/{}", config.service, config.method)
        .parse()
        .map_err(|e| format!("'{}/{}' is not a method path: {e}", config.service, config.method))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| format!("{} is not ready: {e}", config.authority))?;
    let codec = DynamicCodec { output: method.output() };
    match grpc.unary(request, path, codec).await {
        Ok(response) => {
            let json = serde_json::to_string_pretty(response.get_ref()).map_err(|e| format!("response: {e}"))?;
            capture.write(json.as_bytes());
            capture.write(b"\n");
            Ok(None)
        }
        Err(status) => {
            let code = status.code() as i32;
            let name = GRPC_STATUS_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN");
            if status.code() == tonic::Code::Unavailable && status.message().contains("connect") {
                return Err(format!("{} is unreachable: {}", config.authority, status.message()));
            }
            let text = format!("status {code} {name}: {}", status.message());
            capture.write(text.as_bytes());
            capture.write(b"\n");
            Ok(Some((code, text)))
        }
    }
}

/// The channel to the job's server: kept per address and TLS settings.
async fn channel(clients: &GrpcClients, config: &GrpcConfig) -> Result<Channel, String> {
    let authority = config.authority.as_str();
    let key = match &config.tls {
        None => format!("http://{authority}"),
        Some(tls) => format!("https://{authority} {:?} {:?}", tls.root_cas_file, tls.certificate_file),
    };
    if let Some(channel) = clients.channels.get(&key, |_| true) {
        return Ok(channel);
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
        .map_err(|e| format!("'{authority}' is not an address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls_config(authority, tls)?).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{authority} is unreachable: {}", error_chain(&e)))?;
    clients.channels.put(&key, channel.clone());
    Ok(channel)
}

/// TLS as the http executor has it: the CA file, else the web's roots; a client certificate if given.
fn tls_config(authority: &str, tls: &crate::config::TlsOptions) -> Result<ClientTlsConfig, String> {
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host).trim_matches(['[', ']']);
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{key}: cannot read '{}': {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new().domain_name(host);
    config = match &tls.root_cas_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(read("tlsRootCAsFile", path)?)),
        None => config.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.certificate_file, &tls.certificate_key_file) {
        let identity = Identity::from_pem(read("tlsCertificateFile", cert)?, read("tlsCertificateKeyFile", key)?);
        config = config.identity(identity);
    }
    Ok(config)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The method's descriptor, from the cache or by asking the server's reflection service.
async fn method(clients: &GrpcClients, channel: &Channel, config: &GrpcConfig) -> Result<MethodDescriptor, String> {
    let key = format!("{}/{}", config.authority, config.service);
    let cached = clients.methods.lock().expect("grpc methods lock").get(&key).cloned();
    let pool = match cached {
        Some(pool) => pool,
        None => {
            let pool = reflect(channel.clone(), &config.service).await?;
            let mut methods = clients.methods.lock().expect("grpc methods lock");
            if methods.len() >= POOLS_MAX {
                methods.clear();
            }
            methods.insert(key, pool.clone());
            pool
        }
    };
    let service = pool
        .get_service_by_name(&config.service)
        .ok_or_else(|| format!("the server has no service {}", config.service))?;
    service.methods().find(|m| m.name() == config.method).ok_or_else(|| {
        let known: Vec<String> = service.methods().map(|m| m.name().to_string()).collect();
        format!("service {} has no method {} (it has {})", config.service, config.method, known.join(", "))
    })
}

/// The descriptors of the file that declares `service` and of its imports, through server reflection (v1, else
/// v1alpha).
async fn reflect(channel: Channel, service: &str) -> Result<DescriptorPool, String> {
    let files = match reflect_v1(channel.clone(), service).await {
        Ok(files) => files,
        Err(ReflectError::Unimplemented) => match reflect_v1alpha(channel, service).await {
            Ok(files) => files,
            Err(ReflectError::Unimplemented) => {
                return Err("the server does not offer gRPC server reflection, which the grpc executor needs".into());
            }
            Err(ReflectError::Other(e)) => return Err(e),
        },
        Err(ReflectError::Other(e)) => return Err(e),
    };
    let mut protos = Vec::with_capacity(files.len());
    for bytes in files {
        protos
            .push(prost_types::FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| format!("reflection: {e}"))?);
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(protos).map_err(|e| format!("reflection: the server's descriptors: {e}"))?;
    Ok(pool)
}

enum ReflectError {
    Unimplemented,
    Other(String),
}

fn reflect_error(status: tonic::Status) -> ReflectError {
    if status.code() == tonic::Code::Unimplemented {
        ReflectError::Unimplemented
    } else {
        ReflectError::Other(format!("reflection: {}: {}", status.code(), status.message()))
    }
}

/// Ask for the file containing `symbol`, then for every import not sent yet; answers the serialized files.
macro_rules! reflect_with {
    ($name:ident, $pb:path) => {
        async fn $name(channel: Channel, symbol: &str) -> Result<Vec<Vec<u8>>, ReflectError> {
            use $pb as pb;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            let mut client = pb::server_reflection_client::ServerReflectionClient::new(channel);
            let mut files: Vec<Vec<u8>> = Vec::new();
            let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
            let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
            while let Some(request) = wanted.pop() {
                let request = pb::ServerReflectionRequest { host: String::new(), message_request: Some(request) };
                let mut answers =
                    client.server_reflection_info(futures::stream::iter([request])).await.map_err(reflect_error)?.into_inner();
                let answer = answers
                    .message()
                    .await
                    .map_err(reflect_error)?
                    .ok_or_else(|| ReflectError::Other("reflection: no answer".into()))?;
                match answer.message_response {
                    Some(MessageResponse::FileDescriptorResponse(found)) => {
                        for bytes in found.file_descriptor_proto {
                            let proto = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                                .map_err(|e| ReflectError::Other(format!("reflection: {e}")))?;
                            if names.insert(proto.name().to_string()) {
                                files.push(bytes);
                                for dependency in &proto.dependency {
                                    if !names.contains(dependency) {
                                        wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                                    }
                                }
                            }
                        }
                    }
                    Some(MessageResponse::ErrorResponse(error)) => {
                        return Err(ReflectError::Other(format!(
                            "reflection: {} ({})",
                            error.error_message, error.error_code
                        )));
                    }
                    _ => return Err(ReflectError::Other("reflection: an unexpected answer".into())),
                }
                wanted.retain(|w| !matches!(w, MessageRequest::FileByFilename(n) if names.contains(n)));
                if files.len() > REFLECTION_FILES_MAX {
                    return Err(ReflectError::Other("reflection: too many files".into()));
                }
            }
            Ok(files)
        }
    };
}

reflect_with!(reflect_v1, tonic_reflection::pb::v1);
reflect_with!(reflect_v1alpha, tonic_reflection::pb::v1alpha);

/// Encodes a [`DynamicMessage`] request and decodes the response into one of the output type.
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, tonic::Status> {
        let mut message = DynamicMessage::new(self.output.clone());
        message.merge(src).map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))?;
        Ok(Some(message))
    }
}
