//! Command byte -> handler.

use super::{ClientSession, Flow, SYNC_ALL, Sync};
use crate::errors::ClientError;
use crate::protocol::command::{self, *};
use crate::protocol::response::Expect;
use crate::protocol::response::Summary;
use crate::session::tracker::reduce_command;
use crate::sql::Kill;

impl ClientSession {
    pub(in crate::frontend) async fn dispatch(&mut self, cmd: u8, len: usize) -> Flow {
        match cmd {
            COM_QUIT => Flow::Close,
            COM_PING if self.backend.is_none() => {
                // As the server's OK would: ROW_COUNT() is 0 after it.
                self.state.answered_locally(0);
                let warnings = self.session_warnings_on_ok().unwrap_or(0);
                self.answer_locally_with(None, warnings).await
            }
            COM_PING => {
                // Its OK sets ROW_COUNT() to 0 on the connection, as any OK does.
                self.ok_warnings = self.session_warnings_on_ok();
                let (flow, summary) = self.relay_command(Some(Expect::Single), SYNC_ALL).await;
                if let Some(s) = summary {
                    self.after_command(&s).await;
                }
                flow
            }
            COM_QUERY => self.query(len).await,
            COM_INIT_DB => {
                let schema = String::from_utf8_lossy(&self.payload(len)[1..]).into_owned();
                let sync = Sync {
                    schema: false,
                    ..SYNC_ALL
                };
                self.ok_warnings = self.session_warnings_on_ok();
                let (flow, summary) = self.relay_command(Some(Expect::Single), sync).await;
                if let Some(s) = summary {
                    if s.error.is_none() {
                        // Session tracking reports it too; this covers servers that do not.
                        self.set_schema(Some(schema.clone()));
                    }
                    self.after_command(&s).await;
                }
                flow
            }
            COM_FIELD_LIST => self.relay_and_track(Expect::FieldList).await,
            COM_STATISTICS => self.relay_and_track(Expect::SingleRaw).await,
            COM_SET_OPTION => {
                let option = self
                    .payload(len)
                    .get(1..3)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]));
                let sync = Sync {
                    multi_statements: false,
                    ..SYNC_ALL
                };
                let (flow, summary) = self.relay_command(Some(Expect::Single), sync).await;
                if let (Some(s), Some(option @ (0 | 1))) = (summary, option) {
                    if s.error.is_none() {
                        self.state.multi_statements = option == 0;
                        if let Some(b) = self.backend.as_mut() {
                            b.multi_statements = option == 0;
                        }
                    }
                    self.after_command(&s).await;
                }
                flow
            }
            COM_STMT_PREPARE => self.stmt_prepare().await,
            COM_STMT_EXECUTE => self.stmt_execute(len).await,
            COM_STMT_FETCH => self.stmt_fetch(len).await,
            COM_STMT_RESET => self.stmt_reset(len).await,
            COM_STMT_SEND_LONG_DATA => self.stmt_long_data(len).await,
            COM_STMT_CLOSE => self.stmt_close(len).await,
            COM_RESET_CONNECTION => self.reset_connection().await,
            COM_CHANGE_USER => self.change_user().await,
            COM_PROCESS_KILL => {
                let id = self
                    .payload(len)
                    .get(1..5)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                match id {
                    Some(id) => {
                        self.kill(
                            Kill::Connection {
                                id: u64::from(id),
                                modifier: None,
                            },
                            true,
                        )
                        .await
                    }
                    None => {
                        self.reply_error(&ClientError::malformed_packet("COM_PROCESS_KILL"))
                            .await
                    }
                }
            }
            // Replication, server administration and long-obsolete commands.
            COM_CREATE_DB | COM_DROP_DB | COM_REFRESH | COM_SHUTDOWN | COM_PROCESS_INFO
            | COM_CONNECT | COM_DEBUG | COM_TIME | COM_DELAYED_INSERT | COM_BINLOG_DUMP
            | COM_TABLE_DUMP | COM_CONNECT_OUT | COM_REGISTER_SLAVE | COM_DAEMON
            | COM_BINLOG_DUMP_GTID => {
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                self.reply_error(&ClientError::command_not_relayed(command::name(cmd)))
                    .await
            }
            _ => {
                if self.skip_command().await == Flow::Close {
                    return Flow::Close;
                }
                self.reply_error(&ClientError::unknown_command(cmd)).await
            }
        }
    }

    pub(in crate::frontend) async fn relay_and_track(&mut self, expect: Expect) -> Flow {
        let (flow, summary) = self.relay_command(Some(expect), SYNC_ALL).await;
        if let Some(s) = summary {
            self.after_command(&s).await;
        }
        flow
    }

    /// Applies the response to a command that is no statement (COM_INIT_DB, COM_PING, ...),
    /// then gives the connection back if nothing holds it.
    pub(in crate::frontend) async fn after_command(&mut self, summary: &Summary) {
        let reduction = reduce_command(None, summary, self.reduce_context());
        self.apply(summary, reduction).await;
        self.release_if_free().await;
    }
}
