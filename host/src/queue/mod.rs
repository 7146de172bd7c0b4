//! RabbitMQ: the pipeline's broker objects, confirmed publishing, consuming,
//! and the dead-letter queue.
//!
//! Every object is named after the pipeline, so two pipelines never mix:
//! exchange and queue `wasmcdc.<pipeline>`, dead-letter exchange and queue
//! `wasmcdc.<pipeline>.dlx` / `wasmcdc.<pipeline>.dlq`. Queues are quorum
//! queues with at-least-once dead-lettering, so a message that exceeds the
//! delivery limit is moved, never dropped.

pub mod batcher;
pub mod capture;

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};

use crate::change::Message;

/// Routing key of change messages on the pipeline's exchange.
const ROUTING_KEY: &str = "changes";

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The connection could not be opened.
    #[error(
        "cannot reach RabbitMQ at {url}: {reason}; check that it is running and that --amqp-url (user, password, vhost) is right"
    )]
    Connect {
        /// The URL, password masked.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The broker refused or lost a publish.
    #[error("RabbitMQ did not accept a message: {0}; the capture stops and resumes from the last confirmed position")]
    NotConfirmed(String),
    /// A message larger than RabbitMQ accepts; sending it again cannot help.
    #[error(
        "a message of {bytes} bytes is larger than the {limit}-byte limit for one message (one change at LSN {lsn} is that large by itself); raise max-message-bytes and RabbitMQ's max_message_size above it"
    )]
    TooLarge {
        /// The message's size.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// The commit LSN of its transaction.
        lsn: String,
    },
    /// The queue exists with other arguments than this version declares.
    #[error(
        "the queue {queue} was declared by an earlier wasmcdc without single-active-consumer ({reason}); stop the pipeline's processes, let the apply drain it, delete it with `rabbitmqctl delete_queue {queue}`, and start again"
    )]
    OldQueue {
        /// The queue.
        queue: String,
        /// What RabbitMQ said.
        reason: String,
    },
    /// Any other broker error.
    #[error("RabbitMQ error while {doing}: {source}")]
    Broker {
        /// What was being done.
        doing: &'static str,
        /// The client error.
        source: lapin::Error,
    },
}

fn broker(doing: &'static str) -> impl FnOnce(lapin::Error) -> QueueError {
    move |source| QueueError::Broker { doing, source }
}

/// The names of one pipeline's broker objects.
#[derive(Clone, Debug)]
pub struct Names {
    /// Exchange that change messages are published to.
    pub exchange: String,
    /// Queue the apply consumes.
    pub queue: String,
    /// Dead-letter exchange.
    pub dlx: String,
    /// Dead-letter queue.
    pub dlq: String,
}

impl Names {
    /// Names for the pipeline `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        let base = format!("wasmcdc.{pipeline}");
        Names {
            exchange: base.clone(),
            queue: base.clone(),
            dlx: format!("{base}.dlx"),
            dlq: format!("{base}.dlq"),
        }
    }
}

/// The largest message body published by default: RabbitMQ 4's default
/// `max_message_size` (3.x allows 128 MiB). A larger body would close the channel.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A connection to RabbitMQ with one channel in confirm mode.
pub struct Broker {
    connection: Connection,
    channel: Channel,
    /// This pipeline's object names.
    pub names: Names,
    /// The largest message body this broker is sent.
    pub max_message_bytes: usize,
}

/// Why a change was dead-lettered, carried as message headers.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The stage that refused it: `transform`, `apply` or `decode`.
    pub stage: &'static str,
    /// One sentence saying why.
    pub reason: String,
    /// Commit LSN of the source transaction, as text.
    pub lsn: String,
    /// The table, `schema.table`, where known.
    pub table: String,
}

impl Broker {
    /// Connects and opens a confirm-mode channel.
    pub async fn connect(url: &str, pipeline: &str) -> Result<Self, QueueError> {
        let connect = Connection::connect(url, ConnectionProperties::default());
        let connection = match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(QueueError::Connect {
                    url: crate::config::mask_url(url),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(QueueError::Connect {
                    url: crate::config::mask_url(url),
                    reason: "no answer within 15 s".into(),
                });
            }
        };
        let channel = connection.create_channel().await.map_err(broker("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;
        Ok(Broker {
            connection,
            channel,
            names: Names::new(pipeline),
            max_message_bytes: MAX_MESSAGE_BYTES,
        })
    }

    /// Declares the exchange, queue and dead-letter objects; idempotent.
    pub async fn declare(&self) -> Result<(), QueueError> {
        let n = &self.names;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                n.dlx.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(broker("declaring the dead-letter exchange"))?;
        self.channel
            .queue_declare(
                n.dlq.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("declaring the dead-letter queue"))?;
        self.channel
            .queue_bind(
                n.dlq.as_str().into(),
                n.dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("binding the dead-letter queue"))?;
        self.channel
            .exchange_declare(
                n.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(broker("declaring the exchange"))?;
        self.channel
            .queue_declare(
                n.queue.as_str().into(),
                QueueDeclareOptions::durable(),
                quorum_args(&n.dlx),
            )
            .await
            .map_err(|e| {
                if e.is_amqp_soft_error() && e.to_string().contains("inequivalent arg") {
                    QueueError::OldQueue {
                        queue: n.queue.clone(),
                        reason: e.to_string(),
                    }
                } else {
                    QueueError::Broker {
                        doing: "declaring the queue",
                        source: e,
                    }
                }
            })?;
        self.channel
            .queue_bind(
                n.queue.as_str().into(),
                n.exchange.as_str().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("binding the queue"))?;
        Ok(())
    }

    /// Publishes a change message (persistent, mandatory) and returns its pending confirm.
    pub async fn publish(&self, message: &Message) -> Result<PendingConfirm, QueueError> {
        let body = serde_json::to_vec(message).map_err(|e| QueueError::NotConfirmed(e.to_string()))?;
        if body.len() > self.max_message_bytes {
            return Err(QueueError::TooLarge {
                bytes: body.len(),
                limit: self.max_message_bytes,
                lsn: message.last_lsn.to_string(),
            });
        }
        let id = match message.chunk {
            Some(c) => format!("{}:{}:{}", message.pipeline, message.last_lsn, c.index),
            None => format!("{}:{}", message.pipeline, message.last_lsn),
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.into());
        let confirm = self
            .channel
            .basic_publish(
                self.names.exchange.as_str().into(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(broker("publishing"))?;
        Ok(PendingConfirm(confirm))
    }

    /// Dead-letters one change message with the reason, and waits for the confirm.
    pub async fn dead_letter_message(&self, message: &Message, why: &DeadLetter) -> Result<(), QueueError> {
        let body = serde_json::to_vec(message).map_err(|e| QueueError::NotConfirmed(e.to_string()))?;
        self.dead_letter(&body, why).await
    }

    /// Publishes `body` to the dead-letter queue with the reason in its headers, and waits for the confirm.
    pub async fn dead_letter(&self, body: &[u8], why: &DeadLetter) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        for (k, v) in [
            ("x-wasmcdc-stage", why.stage.to_string()),
            ("x-wasmcdc-reason", why.reason.clone()),
            ("x-wasmcdc-lsn", why.lsn.clone()),
            ("x-wasmcdc-table", why.table.clone()),
        ] {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.names.dlx.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .map_err(broker("dead-lettering"))?;
        PendingConfirm(confirm).wait().await?;
        crate::observe::dead_lettered(why, body);
        Ok(())
    }

    /// Starts consuming the pipeline's queue with at most `prefetch` unacknowledged messages.
    pub async fn consume(&self, prefetch: u16) -> Result<Consumer, QueueError> {
        self.channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch"))?;
        self.channel
            .basic_consume(
                self.names.queue.as_str().into(),
                ShortString::from("wasmcdc-apply"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("starting to consume"))
    }

    /// Acknowledges every delivery up to and including `tag`.
    pub async fn ack_through(&self, tag: u64) -> Result<(), QueueError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(broker("acknowledging"))
    }

    /// Acknowledges the delivery `tag` alone.
    pub async fn ack_one(&self, tag: u64) -> Result<(), QueueError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await
            .map_err(broker("acknowledging"))
    }

    /// Takes the next dead letter without settling it; it stays unacknowledged until settled or the connection closes.
    pub async fn next_dead_letter(&self) -> Result<Option<DeadMessage>, QueueError> {
        let got = self
            .channel
            .basic_get(
                self.names.dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(broker("reading the dead-letter queue"))?;
        Ok(got.map(|m| {
            let d = m.delivery;
            let headers = d.properties.headers().as_ref();
            let stage = header(headers, "x-wasmcdc-stage");
            DeadMessage {
                tag: d.delivery_tag,
                reason: header(headers, "x-wasmcdc-reason").unwrap_or_else(|| {
                    "RabbitMQ dead-lettered it after too many delivery attempts (the apply failed on it repeatedly)"
                        .into()
                }),
                stage: stage.unwrap_or_else(|| "broker".into()),
                lsn: header(headers, "x-wasmcdc-lsn").unwrap_or_default(),
                table: header(headers, "x-wasmcdc-table").unwrap_or_default(),
                body: d.data,
            }
        }))
    }

    /// Settles a dead letter: removes it, or puts it back.
    pub async fn settle_dead_letter(&self, tag: u64, remove: bool) -> Result<(), QueueError> {
        if remove {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
                .map_err(broker("removing a dead letter"))
        } else {
            self.channel
                .basic_nack(
                    tag,
                    lapin::options::BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
                .map_err(broker("returning a dead letter"))
        }
    }

    /// Messages ready in the pipeline's queue and in its dead-letter queue.
    pub async fn depths(&self) -> Result<(u32, u32), QueueError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = self
            .channel
            .queue_declare(self.names.queue.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(broker("reading the queue depth"))?;
        let d = self
            .channel
            .queue_declare(self.names.dlq.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(broker("reading the dead-letter queue depth"))?;
        Ok((q.message_count(), d.message_count()))
    }

    /// Consumers of the pipeline's queue: the active apply and its standbys.
    pub async fn consumers(&self) -> Result<u32, QueueError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = self
            .channel
            .queue_declare(self.names.queue.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(broker("counting the queue's consumers"))?;
        Ok(q.consumer_count())
    }

    /// What a passive declare tells about `queue`, or `None` if it does not exist.
    ///
    /// RabbitMQ closes the channel of a passive declare that finds no queue, so each probe
    /// runs on a channel of its own. That absence is expected, and the client's error line
    /// about it is kept out of the log; any other failure is an error.
    pub async fn probe(&self, queue: &str) -> Result<Option<QueueState>, QueueError> {
        let _expected = crate::logs::expect_noise(format!("no queue '{queue}'"));
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => {
                let _ = channel.close(200, "bye".into()).await;
                Ok(Some(QueueState {
                    ready: q.message_count(),
                    consumers: q.consumer_count(),
                }))
            }
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == NOT_FOUND) => {
                Ok(None)
            }
            Err(e) => Err(broker("inspecting a queue")(e)),
        }
    }

    /// Deletes the pipeline's exchanges and queues.
    pub async fn delete(&self) -> Result<(), QueueError> {
        let n = &self.names;
        for q in [&n.queue, &n.dlq] {
            self.channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(broker("deleting a queue"))?;
        }
        for x in [&n.exchange, &n.dlx] {
            self.channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(broker("deleting an exchange"))?;
        }
        Ok(())
    }

    /// Closes the connection cleanly.
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// The AMQP reply code for a queue or exchange that does not exist.
const NOT_FOUND: u16 = 404;

/// One queue as a passive declare sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery; those delivered and not yet acknowledged are not counted.
    pub ready: u32,
    /// Consumers attached: the active apply and its standbys.
    pub consumers: u32,
}

/// A publish awaiting the broker's confirm.
pub struct PendingConfirm(PublisherConfirm);

impl PendingConfirm {
    /// Waits for the confirm; a nack or a returned (unroutable) message is an error.
    pub async fn wait(self) -> Result<(), QueueError> {
        match self.0.await.map_err(broker("waiting for a publisher confirm"))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(QueueError::NotConfirmed(format!(
                "the message was unroutable and returned ({}); was the queue deleted?",
                returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(QueueError::NotConfirmed(
                "the broker refused it (nack), for example because the queue is full or an alarm is on".into(),
            )),
            Confirmation::NotRequested => Err(QueueError::NotConfirmed("confirms were not enabled".into())),
        }
    }
}

/// The change queue: quorum, dead-lettering at least once (which needs
/// reject-publish overflow), and one active consumer: a second apply is a
/// standby that RabbitMQ switches to when the first goes away.
fn quorum_args(dead_letter_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for (k, v) in [
        ("x-queue-type", "quorum"),
        ("x-dead-letter-exchange", dead_letter_exchange),
        ("x-dead-letter-strategy", "at-least-once"),
        ("x-overflow", "reject-publish"),
    ] {
        args.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    args
}

fn header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A message read from the dead-letter queue.
#[derive(Debug)]
pub struct DeadMessage {
    /// Delivery tag, to settle it.
    pub tag: u64,
    /// Stage that refused it; `broker` when RabbitMQ dead-lettered it (delivery limit).
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Source commit LSN, where known.
    pub lsn: String,
    /// Source table, where known.
    pub table: String,
    /// The body as it was.
    pub body: Vec<u8>,
}
