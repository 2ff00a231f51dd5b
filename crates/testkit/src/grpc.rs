//! A real gRPC server on loopback for the grpc executor's tests: service `kairos.test.Greeter` with server
//! reflection (v1 and v1alpha, tonic-reflection), its descriptors written out here rather than compiled from a
//! `.proto` file (no protoc at build time):
//!
//! ```proto
//! package kairos.test;
//! message HelloRequest { string name = 1; int32 delay_ms = 2; }
//! message HelloReply { string message = 1; int64 calls = 2; }
//! service Greeter {
//!   rpc SayHello(HelloRequest) returns (HelloReply);  // "hello, <name>", and the x-token metadata if sent
//!   rpc Fail(HelloRequest) returns (HelloReply);      // always NOT_FOUND
//!   rpc Slow(HelloRequest) returns (HelloReply);      // answers after delay_ms
//! }
//! ```
//!
//! It counts the calls that completed and those abandoned by the client (a dropped call: timeout or cancel).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
    ServiceDescriptorProto,
};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// The running server; stopped on drop.
pub struct GreeterServer {
    pub addr: SocketAddr,
    /// Calls answered (any method).
    pub answered: Arc<AtomicU64>,
    /// Calls the client abandoned before their answer.
    pub abandoned: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GreeterServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GreeterServer {
    /// `host:port/kairos.test.Greeter/<method>`, the executor's `url`.
    pub fn url(&self, method: &str) -> String {
        format!("{}/kairos.test.Greeter/{method}", self.addr)
    }
}

fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        json_name: Some(
            name.split('_')
                .enumerate()
                .map(|(i, w)| if i == 0 { w.to_string() } else { w[..1].to_uppercase() + &w[1..] })
                .collect(),
        ),
        ..FieldDescriptorProto::default()
    }
}

fn method(name: &str) -> MethodDescriptorProto {
    MethodDescriptorProto {
        name: Some(name.into()),
        input_type: Some(".kairos.test.HelloRequest".into()),
        output_type: Some(".kairos.test.HelloReply".into()),
        ..MethodDescriptorProto::default()
    }
}

/// The service's file, as a set.
fn descriptors() -> FileDescriptorSet {
    let file = FileDescriptorProto {
        name: Some("kairos/test/greeter.proto".into()),
        package: Some("kairos.test".into()),
        syntax: Some("proto3".into()),
        message_type: vec![
            DescriptorProto {
                name: Some("HelloRequest".into()),
                field: vec![field("name", 1, Type::String), field("delay_ms", 2, Type::Int32)],
                ..DescriptorProto::default()
            },
            DescriptorProto {
                name: Some("HelloReply".into()),
                field: vec![field("message", 1, Type::String), field("calls", 2, Type::Int64)],
                ..DescriptorProto::default()
            },
        ],
        service: vec![ServiceDescriptorProto {
            name: Some("Greeter".into()),
            method: vec![method("SayHello"), method("Fail"), method("Slow")],
            ..ServiceDescriptorProto::default()
        }],
        ..FileDescriptorProto::default()
    };
    FileDescriptorSet { file: vec![file] }
}

/// Start the server on a free loopback port; answers once it accepts connections.
pub async fn greeter() -> GreeterServer {
    greeter_with(None).await
}

/// The same server over TLS: its certificate and key (PEM), and the CA whose client certificates it requires, if
/// any.
pub async fn greeter_tls(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> GreeterServer {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    greeter_with(Some(tls)).await
}

async fn greeter_with(tls: Option<tonic::transport::ServerTlsConfig>) -> GreeterServer {
    let set = descriptors();
    let pool = DescriptorPool::from_file_descriptor_set(set.clone()).expect("the greeter's descriptors are valid");
    let encoded = set.encode_to_vec();
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&encoded)
        .build_v1()
        .expect("reflection v1");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&encoded)
        .build_v1alpha()
        .expect("reflection v1alpha");
    let (answered, abandoned) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let greeter = Greeter {
        request: pool.get_message_by_name("kairos.test.HelloRequest").expect("HelloRequest"),
        reply: pool.get_message_by_name("kairos.test.HelloReply").expect("HelloReply"),
        answered: answered.clone(),
        abandoned: abandoned.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the gRPC server");
    let addr = listener.local_addr().expect("its address");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("the test's TLS settings");
    }
    let server = builder.add_service(v1).add_service(v1alpha).add_service(greeter);
    let task = tokio::spawn(async move {
        let _ = server.serve_with_incoming(incoming).await;
    });
    GreeterServer { addr, answered, abandoned, task }
}

#[derive(Clone)]
struct Greeter {
    request: MessageDescriptor,
    reply: MessageDescriptor,
    answered: Arc<AtomicU64>,
    abandoned: Arc<AtomicU64>,
}

impl NamedService for Greeter {
    const NAME: &'static str = "kairos.test.Greeter";
}

impl Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let greeter = self.clone();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        Box::pin(async move {
            let codec = GreeterCodec { request: greeter.request.clone() };
            let handler = Handler { greeter, method };
            Ok(tonic::server::Grpc::new(codec).unary(handler, request).await)
        })
    }
}

struct Handler {
    greeter: Greeter,
    method: String,
}

/// Counts the call as abandoned unless it was answered.
struct Abandoned(Option<Arc<AtomicU64>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Service<tonic::Request<DynamicMessage>> for Handler {
    type Response = tonic::Response<DynamicMessage>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, tonic::Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let (greeter, method) = (self.greeter.clone(), self.method.clone());
        Box::pin(async move {
            let mut guard = Abandoned(Some(greeter.abandoned.clone()));
            let token = request.metadata().get("x-token").and_then(|v| v.to_str().ok()).map(str::to_string);
            let message = request.into_inner();
            let name = match message.get_field_by_name("name").as_deref() {
                Some(Value::String(name)) => name.clone(),
                _ => String::new(),
            };
            let delay = match message.get_field_by_name("delay_ms").as_deref() {
                Some(Value::I32(ms)) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
                _ => Duration::ZERO,
            };
            let result = match method.as_str() {
                "Fail" => Err(tonic::Status::not_found(format!("no greeting for {name}"))),
                "Slow" => {
                    tokio::time::sleep(delay).await;
                    Ok(format!("slowly, hello, {name}"))
                }
                _ => Ok(match token {
                    Some(token) => format!("hello, {name} (token {token})"),
                    None => format!("hello, {name}"),
                }),
            };
            guard.0 = None;
            let calls = greeter.answered.fetch_add(1, Ordering::SeqCst) + 1;
            let text = result?;
            let mut reply = DynamicMessage::new(greeter.reply.clone());
            reply.set_field_by_name("message", Value::String(text));
            reply.set_field_by_name("calls", Value::I64(i64::try_from(calls).unwrap_or(i64::MAX)));
            Ok(tonic::Response::new(reply))
        })
    }
}

struct GreeterCodec {
    request: MessageDescriptor,
}

impl Codec for GreeterCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = ReplyEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> ReplyEncoder {
        ReplyEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder { request: self.request.clone() }
    }
}

struct ReplyEncoder;

impl Encoder for ReplyEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

struct RequestDecoder {
    request: MessageDescriptor,
}

impl Decoder for RequestDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, tonic::Status> {
        let mut message = DynamicMessage::new(self.request.clone());
        message.merge(src).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(Some(message))
    }
}
