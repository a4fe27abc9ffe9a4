//! Hooking the limiter's programs to interfaces: XDP in driver mode where
//! the device supports it, generic (SKB) mode otherwise; tc through TCX
//! where the kernel has it (or unless told otherwise), a clsact qdisc
//! otherwise. With a pin directory the links are pinned there, and a link a
//! previous run pinned is taken over in place (the program swapped
//! atomically, no gap in enforcement); a pinned link that can no longer be
//! taken over (its interface gone or recreated) is unpinned and replaced.
//!
//! An interface already carrying another program's XDP is never replaced:
//! the kernel refuses a link over an attached program (EBUSY) or a second
//! mode (EEXIST), and [`LimiterError::Occupied`] says so, for the caller to
//! hook tc there instead.

use std::{fmt, path::PathBuf, time::Duration};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
    xdp::XdpLink,
};

use super::{Limiter, LimiterError};
use crate::kernel::errno;

const XDP_PROGRAM: &str = "limiter_xdp";
const CMPXCHG_PROBE: &str = "limiter_probe_cmpxchg";
pub(super) const TC_PROGRAM: &str = "limiter_tc";

/// How the XDP program was hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpHook {
    /// Native: runs in the driver before an skb exists.
    Driver,
    /// Generic: runs on the skb, for devices without native XDP.
    Generic,
    /// A link pinned by an earlier run, now running this program.
    TakenOver,
}

/// Which tc hook to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcMode {
    /// TCX where the kernel has it (6.6+), else clsact.
    #[default]
    Auto,
    /// A clsact qdisc filter (netlink) even where TCX exists.
    Clsact,
}

/// How the tc program was hooked (ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Tcx,
    Clsact,
    TakenOver,
}

impl fmt::Display for XdpHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpHook::Driver => "xdp driver mode",
            XdpHook::Generic => "xdp generic (skb) mode",
            XdpHook::TakenOver => "xdp pinned link taken over",
        })
    }
}

impl fmt::Display for TcHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcHook::Tcx => "tcx ingress",
            TcHook::Clsact => "clsact ingress",
            TcHook::TakenOver => "tcx pinned link taken over",
        })
    }
}

impl Limiter {
    /// Hooks the XDP program to `interface`: driver mode, else generic.
    pub fn attach_xdp(&mut self, interface: &str) -> Result<XdpHook, LimiterError> {
        let pin = self.link_pin_path("xdp", interface);
        if let Some(path) = &pin
            && let Ok(old) = PinnedLink::from_pin(path)
        {
            match self.take_over_xdp(old, interface) {
                Ok(()) => {
                    tracing::info!(interface, path = %path.display(), "limiter took over pinned xdp link");
                    return Ok(XdpHook::TakenOver);
                }
                Err(e) => unpin_stale(path, interface, &e)?,
            }
        }
        let program = self.xdp_program()?;
        let (id, hook) = match program.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, XdpHook::Driver),
            Err(driver) => {
                tracing::debug!(interface, error = %errno::describe(&driver), "no native xdp");
                if is_occupied(&driver) {
                    return Err(occupied(interface, &driver));
                }
                let id = program.attach(interface, XdpMode::Skb).map_err(|e| {
                    if is_occupied(&e) {
                        occupied(interface, &e)
                    } else {
                        attach_error(interface, &e)
                    }
                })?;
                (id, XdpHook::Generic)
            }
        };
        if let Some(path) = pin {
            let link = program
                .take_link(id)
                .map_err(|e| attach_error(interface, &e))?;
            let link = FdLink::try_from(link).map_err(|e| attach_error(interface, &e))?;
            self.pin_link(link, path)?;
        }
        tracing::info!(interface, %hook, "limiter attached");
        Ok(hook)
    }

    fn take_over_xdp(&mut self, old: PinnedLink, interface: &str) -> Result<(), LimiterError> {
        let program = self.xdp_program()?;
        let link = XdpLink::try_from(FdLink::from(old)).map_err(|e| attach_error(interface, &e))?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| attach_error(interface, &e))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(interface, &e))?;
        // Closing our descriptor later leaves the pinned link in force.
        std::mem::drop(link);
        Ok(())
    }

    /// Hooks the tc program to `interface` ingress: TCX, else clsact.
    pub fn attach_tc(&mut self, interface: &str) -> Result<TcHook, LimiterError> {
        self.attach_tc_with(interface, TcMode::Auto)
    }

    /// Hooks the tc program to `interface` ingress as `mode` says. A clsact
    /// filter has no link to pin: with a pin directory it is left in place
    /// when the limiter goes (its keys expire by themselves), and the next
    /// start removes it ([`super::remove_stale_filters`]) before hooking
    /// anew.
    pub fn attach_tc_with(
        &mut self,
        interface: &str,
        mode: TcMode,
    ) -> Result<TcHook, LimiterError> {
        let pin = self.link_pin_path("tc", interface);
        if mode == TcMode::Auto
            && let Some(path) = &pin
            && let Ok(old) = PinnedLink::from_pin(path)
        {
            match self.take_over_tc(old, interface) {
                Ok(()) => {
                    tracing::info!(interface, path = %path.display(), "limiter took over pinned tc link");
                    return Ok(TcHook::TakenOver);
                }
                Err(e) => unpin_stale(path, interface, &e)?,
            }
        }
        let persist = pin.is_some();
        let program = self.tc_program()?;
        let tcx = match mode {
            TcMode::Auto => Some(program.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )),
            TcMode::Clsact => None,
        };
        let (id, hook) = match tcx {
            Some(Ok(id)) => (id, TcHook::Tcx),
            tcx => {
                if let Some(Err(e)) = tcx {
                    tracing::debug!(interface, error = %errno::describe(&e), "no tcx");
                }
                // Already present is fine: the qdisc is shared.
                let _ = qdisc_add_clsact(interface);
                let id = program
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(|e| attach_error(interface, &e))?;
                if persist {
                    // Persist: the filter stays when the limiter goes.
                    let link = program
                        .take_link(id)
                        .map_err(|e| attach_error(interface, &e))?;
                    std::mem::forget(link);
                }
                tracing::info!(interface, hook = %TcHook::Clsact, "limiter attached");
                return Ok(TcHook::Clsact);
            }
        };
        if let Some(path) = pin {
            let link = program
                .take_link(id)
                .map_err(|e| attach_error(interface, &e))?;
            let link = FdLink::try_from(link).map_err(|e| attach_error(interface, &e))?;
            self.pin_link(link, path)?;
        }
        tracing::info!(interface, %hook, "limiter attached");
        Ok(hook)
    }

    fn take_over_tc(&mut self, old: PinnedLink, interface: &str) -> Result<(), LimiterError> {
        let program = self.tc_program()?;
        let link = FdLink::from(old)
            .try_into()
            .map_err(|e| attach_error(interface, &e))?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| attach_error(interface, &e))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(interface, &e))?;
        std::mem::drop(link);
        Ok(())
    }

    /// Time spent in each program and how often it ran, as the kernel
    /// counts them while `kernel.bpf_stats_enabled` is on (zero otherwise).
    pub fn run_stats(&self) -> Result<Vec<(&'static str, Duration, u64)>, LimiterError> {
        let mut stats = Vec::new();
        for name in [XDP_PROGRAM, TC_PROGRAM] {
            let Some(program) = self.ebpf.program(name) else {
                return Err(LimiterError::Missing(name));
            };
            // Not loaded: never attached, nothing to report.
            let Ok(info) = program.info() else { continue };
            stats.push((name, info.run_time(), info.run_count()));
        }
        Ok(stats)
    }

    fn link_pin_path(&self, kind: &str, interface: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|dir| dir.join(format!("{kind}_{interface}")))
    }

    fn pin_link(&mut self, link: FdLink, path: PathBuf) -> Result<(), LimiterError> {
        let pinned = link
            .pin(&path)
            .map_err(|source| LimiterError::Pin { path, source })?;
        self.pinned_links.push(pinned);
        Ok(())
    }

    /// Whether this kernel's verifier takes the BPF compare-and-exchange the
    /// meter needs (Linux 5.12): a tiny program using it is loaded, never
    /// attached. Err holds the verifier's answer.
    pub fn check_kernel_support(&mut self) -> Result<(), LimiterError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(CMPXCHG_PROBE)
            .ok_or(LimiterError::Missing(CMPXCHG_PROBE))?
            .try_into()
            .map_err(|source| LimiterError::Program {
                name: CMPXCHG_PROBE,
                source,
            })?;
        load_once(program.load(), CMPXCHG_PROBE)
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp, LimiterError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(LimiterError::Missing(XDP_PROGRAM))?
            .try_into()
            .map_err(|source| LimiterError::Program {
                name: XDP_PROGRAM,
                source,
            })?;
        load_once(program.load(), XDP_PROGRAM)?;
        Ok(program)
    }

    fn tc_program(&mut self) -> Result<&mut SchedClassifier, LimiterError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(LimiterError::Missing(TC_PROGRAM))?
            .try_into()
            .map_err(|source| LimiterError::Program {
                name: TC_PROGRAM,
                source,
            })?;
        load_once(program.load(), TC_PROGRAM)?;
        Ok(program)
    }
}

/// Turns on the kernel's per-program run-time accounting (what
/// `kernel.bpf_stats_enabled` does) for as long as the returned descriptor
/// is open.
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, LimiterError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| LimiterError::RunStats(errno::describe(&e)))
}

fn load_once(
    result: Result<(), aya::programs::ProgramError>,
    name: &'static str,
) -> Result<(), LimiterError> {
    match result {
        Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        Err(source) => Err(LimiterError::Program { name, source }),
    }
}

/// A pinned link that cannot be taken over (ENOLINK once its interface is
/// gone or recreated) enforces nothing: unpin it and hook afresh.
fn unpin_stale(
    path: &std::path::Path,
    interface: &str,
    why: &LimiterError,
) -> Result<(), LimiterError> {
    tracing::warn!(interface, path = %path.display(), error = %why, "stale pinned limiter link: replaced");
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LimiterError::PinDir {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// EBUSY: a program (or another link) is attached in that mode; EEXIST:
/// one is attached in the other mode.
fn is_occupied(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(errno::code(e), Some(libc::EBUSY | libc::EEXIST))
}

fn occupied(interface: &str, e: &(dyn std::error::Error + 'static)) -> LimiterError {
    LimiterError::Occupied {
        interface: interface.to_owned(),
        detail: errno::describe(e),
    }
}

fn attach_error(interface: &str, e: &(dyn std::error::Error + 'static)) -> LimiterError {
    LimiterError::Attach {
        interface: interface.to_owned(),
        detail: errno::describe(e),
    }
}
