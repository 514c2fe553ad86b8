//! A Feetech STS3215 bus on a serial port: ping (with the model-number check), read, write, sync read
//! and sync write, with status-error checks, retries and per-reply timeouts, as LeRobot's
//! `FeetechMotorsBus` does them through `scservo_sdk`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort, TTYPort};

use super::protocol::{self, Frame, Parsed, Register, reg};

/// Baud rate of an SO-101 bus (LeRobot's `DEFAULT_BAUDRATE`).
pub const DEFAULT_BAUDRATE: u32 = 1_000_000;

/// Everything that can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("could not open serial port {port}: {source} (is the arm plugged in and the port right?)")]
    Open {
        port: String,
        #[source]
        source: serialport::Error,
    },
    #[error("serial port {port}: {source}")]
    Io {
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("motor {id}: no reply to {what} within {timeout_ms} ms after {tries} tries")]
    Timeout {
        id: u8,
        what: String,
        timeout_ms: u64,
        tries: usize,
    },
    #[error("motor {id}: corrupt reply to {what} after {tries} tries: {reason}")]
    Corrupt {
        id: u8,
        what: String,
        reason: String,
        tries: usize,
    },
    #[error("motor {id}: status error 0x{error:02X} ({description}) on {what}")]
    Status {
        id: u8,
        error: u8,
        description: String,
        what: String,
    },
    #[error("motor {id}: model number {found}, expected {expected} (STS3215)")]
    WrongModel { id: u8, expected: u16, found: u16 },
    #[error("motor {id}: reply to {what} has {got} data bytes, expected {expected}")]
    ReplyLength {
        id: u8,
        what: String,
        got: usize,
        expected: usize,
    },
    #[error("{register} = {value}: {reason}")]
    Value {
        register: &'static str,
        value: i32,
        reason: String,
    },
}

/// Timing and retry settings.
#[derive(Debug, Clone, Copy)]
pub struct BusOptions {
    pub baudrate: u32,
    /// How long to wait for each status packet. LeRobot's patched SDK waits about 50 ms; toprl waits
    /// 100 ms with 3 retries so a busy host (or a simulated bus on a loaded machine) is not taken for a
    /// dead motor: a motor that stopped answering is reported after about 0.4 s.
    pub reply_timeout: Duration,
    /// Extra attempts for reads, pings and sync reads after a timeout or corrupt reply.
    pub read_retries: usize,
    /// Extra attempts for single writes.
    pub write_retries: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            baudrate: DEFAULT_BAUDRATE,
            reply_timeout: Duration::from_millis(100),
            read_retries: 3,
            write_retries: 3,
        }
    }
}

/// One Feetech bus. The port is opened exclusively (a second program cannot drive the same arm) and
/// released on drop.
pub struct FeetechBus {
    port: TTYPort,
    name: String,
    options: BusOptions,
    rx: Vec<u8>,
}

impl std::fmt::Debug for FeetechBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeetechBus")
            .field("port", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drop for FeetechBus {
    fn drop(&mut self) {
        // TIOCEXCL outlives our descriptor while another one (a simulated bus's) stays open.
        let _ = self.port.set_exclusive(false);
    }
}

/// Why one attempt failed (retried by the caller).
enum Attempt {
    Timeout,
    Corrupt(String),
}

impl FeetechBus {
    /// Opens `port` (8N1 at `options.baudrate`).
    pub fn open(port: &str, options: BusOptions) -> Result<Self, BusError> {
        let opened = serialport::new(port, options.baudrate)
            .timeout(Duration::from_millis(2))
            .open_native()
            .map_err(|source| BusError::Open {
                port: port.to_string(),
                source,
            })?;
        Ok(FeetechBus {
            port: opened,
            name: port.to_string(),
            options,
            rx: Vec::new(),
        })
    }

    pub fn port_name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> BusOptions {
        self.options
    }

    fn io(&self, source: std::io::Error) -> BusError {
        BusError::Io {
            port: self.name.clone(),
            source,
        }
    }

    fn send(&mut self, packet: &[u8]) -> Result<(), BusError> {
        // As the SDK's txPacket: drop stale input (late replies of an earlier timeout) first.
        self.port
            .clear(ClearBuffer::Input)
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        self.rx.clear();
        self.port.write_all(packet).map_err(|e| self.io(e))?;
        self.port.flush().map_err(|e| self.io(e))
    }

    /// Waits for the next status packet from `id` (packets from other ids are skipped, as the SDK does).
    fn receive(&mut self, id: u8) -> Result<Result<Frame, Attempt>, BusError> {
        let deadline = Instant::now() + self.options.reply_timeout;
        let mut buf = [0u8; 256];
        loop {
            loop {
                match protocol::parse_frame(&self.rx) {
                    Parsed::Incomplete => break,
                    Parsed::BadChecksum { reason, consumed } => {
                        self.rx.drain(..consumed);
                        return Ok(Err(Attempt::Corrupt(reason)));
                    }
                    Parsed::Skip { consumed, .. } => {
                        self.rx.drain(..consumed);
                    }
                    Parsed::Frame { frame, consumed } => {
                        self.rx.drain(..consumed);
                        if frame.id == id {
                            return Ok(Ok(frame));
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Err(Attempt::Timeout));
            }
            match self.port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Sends `packet` and waits for `id`'s reply, retrying up to `retries` times.
    fn transact(&mut self, id: u8, packet: &[u8], what: &str, retries: usize) -> Result<Frame, BusError> {
        let mut last = Attempt::Timeout;
        for attempt in 0..=retries {
            self.send(packet)?;
            match self.receive(id)? {
                Ok(frame) => return Ok(frame),
                Err(why) => {
                    tracing::debug!(
                        "motor {id}: {what} attempt {attempt} failed: {}",
                        match &why {
                            Attempt::Timeout => "timeout".to_string(),
                            Attempt::Corrupt(r) => r.clone(),
                        }
                    );
                    last = why;
                }
            }
        }
        Err(self.attempt_error(id, what, last, retries + 1))
    }

    fn attempt_error(&self, id: u8, what: &str, why: Attempt, tries: usize) -> BusError {
        match why {
            Attempt::Timeout => BusError::Timeout {
                id,
                what: what.to_string(),
                timeout_ms: self.options.reply_timeout.as_millis() as u64,
                tries,
            },
            Attempt::Corrupt(reason) => BusError::Corrupt {
                id,
                what: what.to_string(),
                reason,
                tries,
            },
        }
    }

    fn check_status(id: u8, frame: &Frame, what: &str) -> Result<(), BusError> {
        if frame.code != 0 {
            return Err(BusError::Status {
                id,
                error: frame.code,
                description: protocol::describe_error(frame.code),
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// Reads `size` raw bytes at `address` as one unsigned little-endian value.
    pub fn read_raw(&mut self, id: u8, address: u8, size: u8) -> Result<u32, BusError> {
        let what = format!("read of address {address} ({size} bytes)");
        let frame = self.transact(
            id,
            &protocol::read_packet(id, address, size),
            &what,
            self.options.read_retries,
        )?;
        Self::check_status(id, &frame, &what)?;
        if frame.params.len() != size as usize {
            return Err(BusError::ReplyLength {
                id,
                what,
                got: frame.params.len(),
                expected: size as usize,
            });
        }
        Ok(protocol::from_bytes(&frame.params))
    }

    /// Reads a register and decodes its sign.
    pub fn read(&mut self, id: u8, register: &Register) -> Result<i32, BusError> {
        let raw = self.read_raw(id, register.address, register.size)?;
        Ok(protocol::decode_value(register, raw))
    }

    /// Writes a register (sign-encoded) and waits for the motor's acknowledgement.
    pub fn write(&mut self, id: u8, register: &Register, value: i32) -> Result<(), BusError> {
        let raw = protocol::encode_value(register, value).map_err(|reason| BusError::Value {
            register: register.name,
            value,
            reason,
        })?;
        let what = format!("write of {} = {value}", register.name);
        let packet = protocol::write_packet(id, register.address, &protocol::to_bytes(raw, register.size));
        let frame = self.transact(id, &packet, &what, self.options.write_retries)?;
        Self::check_status(id, &frame, &what)
    }

    /// Pings `id` and reads its model number (address 3), as LeRobot's `ping` does.
    pub fn ping(&mut self, id: u8) -> Result<u16, BusError> {
        let frame = self.transact(id, &protocol::ping_packet(id), "ping", self.options.read_retries)?;
        Self::check_status(id, &frame, "ping")?;
        Ok(self.read(id, &reg::MODEL_NUMBER)? as u16)
    }

    /// Pings `id` and checks that it is an STS3215.
    pub fn ping_sts3215(&mut self, id: u8) -> Result<(), BusError> {
        let found = self.ping(id)?;
        if found != protocol::STS3215_MODEL_NUMBER {
            return Err(BusError::WrongModel {
                id,
                expected: protocol::STS3215_MODEL_NUMBER,
                found,
            });
        }
        Ok(())
    }

    /// Reads one register of several motors with one SYNC_READ (one status packet per id, in order).
    /// Status error bits are logged, not fatal, as LeRobot's sync read ignores them.
    pub fn sync_read(&mut self, register: &Register, ids: &[u8]) -> Result<Vec<i32>, BusError> {
        let packet = protocol::sync_read_packet(register.address, register.size, ids);
        let what = format!("sync read of {}", register.name);
        let mut last = (0u8, Attempt::Timeout);
        'attempts: for attempt in 0..=self.options.read_retries {
            self.send(&packet)?;
            let mut values = Vec::with_capacity(ids.len());
            for &id in ids {
                match self.receive(id)? {
                    Ok(frame) => {
                        if frame.code != 0 {
                            tracing::warn!(
                                "motor {id}: status error ({}) on {what}",
                                protocol::describe_error(frame.code)
                            );
                        }
                        if frame.params.len() != register.size as usize {
                            last = (
                                id,
                                Attempt::Corrupt(format!(
                                    "{} data bytes, expected {}",
                                    frame.params.len(),
                                    register.size
                                )),
                            );
                            continue 'attempts;
                        }
                        values.push(protocol::decode_value(
                            register,
                            protocol::from_bytes(&frame.params),
                        ));
                    }
                    Err(why) => {
                        tracing::debug!("{what}: motor {id} failed on attempt {attempt}");
                        last = (id, why);
                        continue 'attempts;
                    }
                }
            }
            return Ok(values);
        }
        Err(self.attempt_error(last.0, &what, last.1, self.options.read_retries + 1))
    }

    /// Writes one register of several motors with one SYNC_WRITE (no replies, as on the real bus).
    pub fn sync_write(&mut self, register: &Register, values: &[(u8, i32)]) -> Result<(), BusError> {
        let mut data = Vec::with_capacity(values.len());
        for &(id, value) in values {
            let raw = protocol::encode_value(register, value).map_err(|reason| BusError::Value {
                register: register.name,
                value,
                reason,
            })?;
            data.push((id, protocol::to_bytes(raw, register.size)));
        }
        self.send(&protocol::sync_write_packet(
            register.address,
            register.size,
            &data,
        ))
    }
}
