//! Hooking the limiter's programs to interfaces: XDP in driver mode where
//! the device supports it, generic (SKB) mode otherwise; tc through TCX
//! where the kernel has it, a clsact qdisc otherwise. With a pin directory
//! the links are pinned there, and a link a previous run pinned is taken
//! over in place (the program swapped atomically, no gap in enforcement).

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
const TC_PROGRAM: &str = "limiter_tc";

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
        let program = self.xdp_program()?;
        if let Some(path) = &pin
            && let Ok(old) = PinnedLink::from_pin(path)
        {
            let link =
                XdpLink::try_from(FdLink::from(old)).map_err(|e| attach_error(interface, &e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| attach_error(interface, &e))?;
            let link = program
                .take_link(id)
                .map_err(|e| attach_error(interface, &e))?;
            // Closing our descriptor later leaves the pinned link in force.
            std::mem::drop(link);
            tracing::info!(interface, path = %path.display(), "limiter took over pinned xdp link");
            return Ok(XdpHook::TakenOver);
        }
        let (id, hook) = match program.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, XdpHook::Driver),
            Err(driver) => {
                tracing::debug!(interface, error = %errno::describe(&driver), "no native xdp");
                let id = program
                    .attach(interface, XdpMode::Skb)
                    .map_err(|e| attach_error(interface, &e))?;
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

    /// Hooks the tc program to `interface` ingress: TCX, else clsact.
    pub fn attach_tc(&mut self, interface: &str) -> Result<TcHook, LimiterError> {
        let pin = self.link_pin_path("tc", interface);
        let program = self.tc_program()?;
        if let Some(path) = &pin
            && let Ok(old) = PinnedLink::from_pin(path)
        {
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
            tracing::info!(interface, path = %path.display(), "limiter took over pinned tc link");
            return Ok(TcHook::TakenOver);
        }
        let tcx = program.attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        let (id, hook) = match tcx {
            Ok(id) => (id, TcHook::Tcx),
            Err(e) => {
                tracing::debug!(interface, error = %errno::describe(&e), "no tcx");
                if pin.is_some() {
                    // A netlink filter has no link to pin.
                    return Err(LimiterError::Attach {
                        interface: interface.to_owned(),
                        detail: format!("persisting needs tcx: {}", errno::describe(&e)),
                    });
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
                (id, TcHook::Clsact)
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

fn attach_error(interface: &str, e: &(dyn std::error::Error + 'static)) -> LimiterError {
    LimiterError::Attach {
        interface: interface.to_owned(),
        detail: errno::describe(e),
    }
}
