//! Hand-built intervals for the encoder and output tests: inlined frames,
//! kernel frames, frames without symbols, two processes.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::model::{Frame, IntervalProfile, Mapping, ProcessLabels, StackCount, Symbol};

pub const APP_BUILD_ID: &str = "4f1c2e9a0b7d3c5e6f8091a2b3c4d5e6f7081920";
pub const LIBC_BUILD_ID: &str = "aa11bb22cc33dd44ee55ff6600778899aabbccdd";
/// 2026-11-25 15:30:00 UTC.
pub const START_SECS: u64 = 1_795_620_600;
pub const PERIOD_NANOS: u64 = 10_101_010;

pub fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START_SECS)
}

fn symbol(function: &str, file: Option<&str>, line: Option<u32>) -> Symbol {
    Symbol {
        function: Arc::from(function),
        file: file.map(Arc::from),
        line,
    }
}

pub fn app_mapping() -> Arc<Mapping> {
    Arc::new(Mapping {
        path: "/usr/bin/shopd".to_owned(),
        build_id: Some(APP_BUILD_ID.to_owned()),
        start: 0x5555_0000_0000,
        end: 0x5555_0010_0000,
        file_offset: 0x1000,
    })
}

pub fn libc_mapping() -> Arc<Mapping> {
    Arc::new(Mapping {
        path: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
        build_id: Some(LIBC_BUILD_ID.to_owned()),
        start: 0x7f00_0000_0000,
        end: 0x7f00_0020_0000,
        file_offset: 0,
    })
}

fn user(mapping: &Arc<Mapping>, address: u64, symbols: Vec<Symbol>) -> Frame {
    Frame {
        address,
        mapping: Some(Arc::clone(mapping)),
        file_offset: address - mapping.start + mapping.file_offset,
        kernel: false,
        symbols,
    }
}

fn kernel(address: u64, name: Option<&str>) -> Frame {
    Frame {
        address,
        mapping: None,
        file_offset: 0,
        kernel: true,
        symbols: name
            .map(|n| vec![symbol(n, None, None)])
            .unwrap_or_default(),
    }
}

pub fn shopd_labels() -> Arc<ProcessLabels> {
    Arc::new(ProcessLabels {
        pid: 4242,
        thread_name: "worker-1".to_owned(),
        executable_name: "shopd".to_owned(),
        container_id: Some("c0ffee1234567890".to_owned()),
        service_name: "shop".to_owned(),
        resource: vec![
            ("service.name", "shop".to_owned()),
            ("process.executable.name", "shopd".to_owned()),
            ("container.id", "c0ffee1234567890".to_owned()),
            ("host.name", "node-1".to_owned()),
            ("k8s.pod.name", "shop-7d9f8-abcde".to_owned()),
        ],
        k8s: Vec::new(),
    })
}

pub fn batch_labels() -> Arc<ProcessLabels> {
    Arc::new(ProcessLabels {
        pid: 777,
        thread_name: String::new(),
        executable_name: "batchjob".to_owned(),
        container_id: None,
        service_name: "batchjob".to_owned(),
        resource: Vec::new(),
        k8s: Vec::new(),
    })
}

/// Leaf first. `parse_order` has `validate_sku` inlined into it; the
/// kernel part is a syscall entered from libc; one libc frame and one
/// kernel frame have no symbols.
pub fn interval() -> IntervalProfile {
    let app = app_mapping();
    let libc = libc_mapping();
    let shopd = shopd_labels();
    let batch = batch_labels();
    let inlined = user(
        &app,
        0x5555_0000_2345,
        vec![
            symbol("validate_sku", Some("src/sku.rs"), Some(31)),
            symbol("parse_order", Some("src/order.rs"), Some(88)),
        ],
    );
    let main = user(
        &app,
        0x5555_0000_1100,
        vec![symbol("main", Some("src/main.rs"), Some(12))],
    );
    let handle = user(
        &app,
        0x5555_0000_1800,
        vec![symbol("handle_request", Some("src/server.rs"), Some(140))],
    );
    let libc_write = user(&libc, 0x7f00_0001_2340, Vec::new());
    let syscall = kernel(0xffff_ffff_8100_1000, Some("do_syscall_64"));
    let kernel_unknown = kernel(0xffff_ffff_8120_0042, None);
    IntervalProfile {
        start: start(),
        duration: Duration::from_secs(10),
        period_nanos: PERIOD_NANOS,
        stacks: vec![
            StackCount {
                labels: Arc::clone(&shopd),
                frames: vec![inlined.clone(), handle.clone(), main.clone()],
                count: 30,
            },
            StackCount {
                labels: Arc::clone(&shopd),
                frames: vec![
                    kernel_unknown,
                    syscall,
                    libc_write,
                    handle.clone(),
                    main.clone(),
                ],
                count: 7,
            },
            StackCount {
                labels: Arc::clone(&batch),
                frames: vec![inlined, main],
                count: 5,
            },
        ],
    }
}

/// About `stacks` distinct stacks over a few hundred functions in eight
/// processes, depth 8 to 40: the size of a busy node's interval.
pub fn large_interval(stacks: usize) -> IntervalProfile {
    let app = app_mapping();
    let libc = libc_mapping();
    let labels: Vec<Arc<ProcessLabels>> = (0..8)
        .map(|i| {
            Arc::new(ProcessLabels {
                pid: 1000 + i,
                thread_name: format!("worker-{}", i % 3),
                executable_name: format!("svc{i}"),
                container_id: (i % 2 == 0).then(|| format!("container{i:02}")),
                service_name: format!("service-{i}"),
                resource: Vec::new(),
                k8s: Vec::new(),
            })
        })
        .collect();
    // A small deterministic generator keeps the test reproducible.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let frame = |n: u64| -> Frame {
        match n % 10 {
            0 => kernel(0xffff_ffff_8100_0000 + n * 16, Some(&format!("kfunc_{n}"))),
            1 => user(&libc, libc.start + n * 32, Vec::new()),
            2 => user(
                &app,
                app.start + n * 64,
                vec![
                    symbol(&format!("inl_{n}"), Some("src/inl.rs"), Some(n as u32)),
                    symbol(&format!("fn_{n}"), Some("src/lib.rs"), Some(n as u32 + 1)),
                ],
            ),
            _ => user(
                &app,
                app.start + n * 64,
                vec![symbol(
                    &format!("fn_{n}"),
                    Some("src/lib.rs"),
                    Some(n as u32),
                )],
            ),
        }
    };
    let stacks = (0..stacks)
        .map(|_| {
            let depth = 8 + (next() % 33) as usize;
            StackCount {
                labels: Arc::clone(&labels[(next() % 8) as usize]),
                frames: (0..depth).map(|_| frame(next() % 400)).collect(),
                count: 1 + next() % 50,
            }
        })
        .collect();
    IntervalProfile {
        start: start(),
        duration: Duration::from_secs(60),
        period_nanos: PERIOD_NANOS,
        stacks,
    }
}
