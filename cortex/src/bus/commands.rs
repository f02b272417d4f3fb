//! Commands to agents across replicas. A worker's respond stage sends each `ActionRequest` as
//! a NATS request on `<command_prefix>.<host>` ([`NatsCommands`]); every gateway subscribes to
//! the subjects of the hosts whose guardian-alpha session it holds, from the session's start to
//! its end ([`CommandServer`]), passes the request to the agent and replies with its answer.
//!
//! A gateway that no longer holds the host stays silent, so that the one which does answers
//! (an agent that moved may briefly be followed by two). With no gateway subscribed NATS has no
//! responder at once, and the action fails with [`LinkError::NoGateway`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap, Message, Request};
use futures_util::StreamExt;
use qsc_channel::delivery::CommandStatus;
use qsc_event::now_ns;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::BusConfig;
use super::nats::BusError;
use crate::respond::links::{CommandAnswer, CommandRoute, RouteResult};
use crate::respond::{AgentLinks, LinkError};

/// The agent's answer status on a reply: `succeeded`, `failed` or `refused`.
const STATUS_HEADER: &str = "Qsc-Status";
/// Why the gateway could not get an answer from the agent it holds.
const ERROR_HEADER: &str = "Qsc-Error";

/// Connects to NATS for the command subjects (core NATS, not the event stream).
pub async fn connect(config: &BusConfig) -> Result<Client, BusError> {
    async_nats::connect(config.url.as_str())
        .await
        .map_err(|e| BusError::Connect {
            url: config.url.clone(),
            reason: e.to_string(),
        })
}

/// The respond stage's route when the agents' sessions live on gateways.
pub struct NatsCommands {
    client: Client,
    config: BusConfig,
}

impl NatsCommands {
    pub fn new(client: Client, config: &BusConfig) -> Self {
        NatsCommands {
            client,
            config: config.clone(),
        }
    }

    async fn request(&self, host: &str, id: u64, body: &[u8], timeout: Duration) -> RouteResult {
        let request = Request::new()
            .payload(body.to_vec().into())
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(self.config.command_subject(host), request)
            .await
            .map_err(|error| match error.kind() {
                RequestErrorKind::NoResponders => LinkError::NoGateway { host: host.into() },
                RequestErrorKind::TimedOut => LinkError::Timeout {
                    host: host.into(),
                    id,
                    timeout,
                },
                RequestErrorKind::Other => LinkError::Bus {
                    host: host.into(),
                    reason: error.to_string(),
                },
            })?;
        decode_reply(host, &reply)
    }
}

impl CommandRoute for NatsCommands {
    fn send<'a>(
        &'a self,
        host: &'a str,
        id: u64,
        body: &'a [u8],
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = RouteResult> + Send + 'a>> {
        Box::pin(self.request(host, id, body, timeout))
    }
}

fn status_name(status: CommandStatus) -> &'static str {
    match status {
        CommandStatus::Succeeded => "succeeded",
        CommandStatus::Failed => "failed",
        CommandStatus::Refused => "refused",
    }
}

fn parse_status(name: &str) -> Option<CommandStatus> {
    [
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Refused,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
}

/// A gateway's reply: the agent's answer, or the gateway's reason why there is none.
fn decode_reply(host: &str, reply: &Message) -> RouteResult {
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
    };
    if let Some(reason) = header(ERROR_HEADER) {
        return Err(LinkError::Bus {
            host: host.into(),
            reason: format!("the gateway holding it: {reason}"),
        });
    }
    let status = header(STATUS_HEADER)
        .as_deref()
        .and_then(parse_status)
        .ok_or_else(|| LinkError::Bus {
            host: host.into(),
            reason: format!("the gateway's reply has no valid {STATUS_HEADER} header"),
        })?;
    Ok((status, reply.payload.to_vec()))
}

/// The headers and body of a reply carrying `answer`.
fn encode_reply(answer: Result<CommandAnswer, LinkError>) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    match answer {
        Ok((status, body)) => {
            headers.insert(STATUS_HEADER, status_name(status));
            (headers, body)
        }
        Err(error) => {
            headers.insert(ERROR_HEADER, error.to_string().as_str());
            (headers, Vec::new())
        }
    }
}

/// A gateway's side: answers the command requests for the hosts whose sessions it holds.
pub struct CommandServer {
    client: Client,
    config: BusConfig,
    links: AgentLinks,
    /// How long the agent has to answer.
    timeout: Duration,
    /// Command ids of this gateway's sessions, apart from the local respond stage's (which
    /// count from the clock in microseconds, far below the top bit).
    ids: Arc<AtomicU64>,
}

impl CommandServer {
    pub fn new(client: Client, config: &BusConfig, links: AgentLinks, timeout: Duration) -> Self {
        CommandServer {
            client,
            config: config.clone(),
            links,
            timeout,
            ids: Arc::new(AtomicU64::new((1 << 63) | (now_ns() / 1000))),
        }
    }

    /// Follows the sessions until shutdown: a subscription per held host.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut held: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            self.follow(&mut held).await;
            tokio::select! {
                () = self.links.changed() => {}
                _ = shutdown.changed() => break,
            }
        }
        for task in held.into_values() {
            task.abort();
        }
    }

    /// Subscribes for newly held hosts and drops the subscriptions of hosts no longer held.
    async fn follow(&self, held: &mut HashMap<String, JoinHandle<()>>) {
        let hosts: HashSet<String> = self.links.connected_hosts().into_iter().collect();
        held.retain(|host, task| {
            let keep = hosts.contains(host) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for host in hosts {
            if held.contains_key(&host) {
                continue;
            }
            let subject = self.config.command_subject(&host);
            match self.client.subscribe(subject.clone()).await {
                Ok(subscription) => {
                    let task = tokio::spawn(self.serve_host(host.clone(), subscription));
                    held.insert(host, task);
                }
                Err(error) => {
                    tracing::error!(%error, %subject, "cannot take commands for a held host");
                }
            }
        }
    }

    fn serve_host(
        &self,
        host: String,
        mut subscription: async_nats::Subscriber,
    ) -> impl Future<Output = ()> + Send + 'static {
        let client = self.client.clone();
        let links = self.links.clone();
        let ids = self.ids.clone();
        let timeout = self.timeout;
        async move {
            while let Some(request) = subscription.next().await {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(answer(
                    client.clone(),
                    links.clone(),
                    host.clone(),
                    id,
                    request,
                    timeout,
                ));
            }
        }
    }
}

/// Passes one request to the host's agent and replies with its answer; silent when this
/// gateway no longer holds the host (another one does, or nobody: the request times out).
async fn answer(
    client: Client,
    links: AgentLinks,
    host: String,
    id: u64,
    request: Message,
    timeout: Duration,
) {
    let Some(reply_to) = request.reply.clone() else {
        tracing::warn!(%host, "command request without a reply subject ignored");
        return;
    };
    if !links.is_connected(&host) {
        return;
    }
    let answer = links.send(&host, id, &request.payload, timeout).await;
    let (headers, body) = encode_reply(answer);
    if let Err(error) = client
        .publish_with_headers(reply_to, headers, body.into())
        .await
    {
        tracing::error!(%error, %host, "the agent's answer could not be sent back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: HeaderMap, body: Vec<u8>) -> Message {
        Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: body.into(),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn replies_carry_the_agent_answer_or_the_gateway_reason() {
        let (headers, body) = encode_reply(Ok((CommandStatus::Refused, b"{}".to_vec())));
        assert_eq!(
            decode_reply("web-01", &reply(headers, body)),
            Ok((CommandStatus::Refused, b"{}".to_vec()))
        );
        let closed = LinkError::SessionClosed {
            host: "web-01".into(),
        };
        let (headers, body) = encode_reply(Err(closed));
        let error = decode_reply("web-01", &reply(headers, body)).unwrap_err();
        assert!(error.to_string().contains("ended before"), "{error}");
        let mut bogus = HeaderMap::new();
        bogus.insert(STATUS_HEADER, "maybe");
        assert!(matches!(
            decode_reply("web-01", &reply(bogus, Vec::new())),
            Err(LinkError::Bus { .. })
        ));
    }
}
