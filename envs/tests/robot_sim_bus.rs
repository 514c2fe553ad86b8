//! The Feetech bus client and the follower/leader drivers against the simulated bus on a real
//! pseudo-terminal: protocol, control-table behaviour, faults and the safety rules.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use toprl_envs::robot::arm::{ArmConfig, ArmError, MOTOR_IDS, So101Arm};
use toprl_envs::robot::bus::{BusError, BusOptions, FeetechBus};
use toprl_envs::robot::calibration::{ArmRole, Calibration};
use toprl_envs::robot::protocol::reg;
use toprl_envs::robot::sim_bus::{Faults, Operator, SimBus, SimBusConfig, default_truth};

/// A simulated bus served on its own thread until dropped.
struct Served {
    port: String,
    stop: Arc<AtomicBool>,
    joints: mpsc::Receiver<[f32; 6]>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(cfg: SimBusConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let (jtx, jrx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut bus = SimBus::new(cfg).expect("sim bus");
            tx.send(bus.port_name().to_string()).unwrap();
            let mut last = Instant::now();
            bus.serve(|b| {
                if last.elapsed() > Duration::from_millis(50) {
                    last = Instant::now();
                    let _ = jtx.send(b.joints());
                }
                stop2.load(Ordering::SeqCst)
            })
            .expect("serving");
        });
        let port = rx.recv_timeout(Duration::from_secs(60)).expect("sim bus port");
        Served {
            port,
            stop,
            joints: jrx,
            handle: Some(handle),
        }
    }

    /// The latest joint positions the simulator published.
    fn latest_joints(&self) -> [f32; 6] {
        std::thread::sleep(Duration::from_millis(120));
        self.joints.try_iter().last().expect("joint report")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn calibrated(dir: &Path, id: &str) -> Calibration {
    let cal = default_truth();
    cal.save(&dir.join(format!("{id}.json"))).unwrap();
    cal
}

fn arm_config(port: &str, dir: &Path, id: &str, role: ArmRole) -> ArmConfig {
    let mut cfg = ArmConfig::new(port, id, role);
    cfg.calibration_dir = Some(dir.to_path_buf());
    cfg
}

#[test]
fn bus_speaks_to_the_simulated_servos() {
    let sim = Served::start(SimBusConfig::default());
    let mut bus = FeetechBus::open(&sim.port, BusOptions::default()).unwrap();
    for id in MOTOR_IDS {
        assert_eq!(bus.ping(id).unwrap(), 777);
    }
    // Factory registers: offset 0, limits 0..4095.
    assert_eq!(bus.read(1, &reg::HOMING_OFFSET).unwrap(), 0);
    assert_eq!(bus.read(1, &reg::MAX_POSITION_LIMIT).unwrap(), 4095);
    // Present = actual - Homing_Offset, with the offset sign-magnitude encoded.
    let before = bus.read(2, &reg::PRESENT_POSITION).unwrap();
    bus.write(2, &reg::HOMING_OFFSET, -100).unwrap();
    assert_eq!(
        bus.read_raw(2, reg::HOMING_OFFSET.address, 2).unwrap(),
        (1 << 11) | 100
    );
    assert_eq!(bus.read(2, &reg::HOMING_OFFSET).unwrap(), -100);
    let after = bus.read(2, &reg::PRESENT_POSITION).unwrap();
    assert_eq!((after - before).rem_euclid(4096), 100, "{before} -> {after}");
    // Sync read agrees with single reads; a missing id times out.
    let all = bus.sync_read(&reg::MODEL_NUMBER, &MOTOR_IDS).unwrap();
    assert_eq!(all, vec![777; 6]);
    assert!(matches!(bus.ping(9), Err(BusError::Timeout { id: 9, .. })));
    // Torque on makes Goal_Position move the joint; sync write has no reply.
    let start = bus.read(1, &reg::PRESENT_POSITION).unwrap();
    bus.write(1, &reg::TORQUE_ENABLE, 1).unwrap();
    bus.sync_write(&reg::GOAL_POSITION, &[(1, start + 200)]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let moved = bus.read(1, &reg::PRESENT_POSITION).unwrap();
    assert!(
        (moved - (start + 200)).abs() < 20,
        "goal {} present {moved}",
        start + 200
    );
    // Values that do not fit are refused before anything is sent.
    assert!(matches!(
        bus.write(1, &reg::HOMING_OFFSET, 3000),
        Err(BusError::Value { .. })
    ));
}

#[test]
fn faults_are_reported() {
    let silent = Served::start(SimBusConfig {
        faults: Faults {
            silent_motor: Some(3),
            ..Faults::default()
        },
        ..SimBusConfig::default()
    });
    let mut bus = FeetechBus::open(&silent.port, BusOptions::default()).unwrap();
    assert_eq!(bus.ping(2).unwrap(), 777);
    let err = bus.sync_read(&reg::PRESENT_POSITION, &MOTOR_IDS).unwrap_err();
    assert!(matches!(err, BusError::Timeout { id: 3, tries: 4, .. }), "{err}");
    drop(bus);
    drop(silent);

    let corrupt = Served::start(SimBusConfig {
        faults: Faults {
            corrupt_motor: Some(4),
            ..Faults::default()
        },
        ..SimBusConfig::default()
    });
    let mut bus = FeetechBus::open(&corrupt.port, BusOptions::default()).unwrap();
    let err = bus.read(4, &reg::PRESENT_POSITION).unwrap_err();
    assert!(matches!(err, BusError::Corrupt { id: 4, .. }), "{err}");
    assert!(bus.read(5, &reg::PRESENT_POSITION).is_ok());
    drop(bus);
    drop(corrupt);

    let wrong = Served::start(SimBusConfig {
        faults: Faults {
            wrong_model_motor: Some(2),
            ..Faults::default()
        },
        ..SimBusConfig::default()
    });
    let mut bus = FeetechBus::open(&wrong.port, BusOptions::default()).unwrap();
    let err = bus.ping_sts3215(2).unwrap_err();
    assert!(
        matches!(
            err,
            BusError::WrongModel {
                id: 2,
                expected: 777,
                found: 1234
            }
        ),
        "{err}"
    );
}

#[test]
fn follower_obeys_the_safety_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cal = calibrated(dir.path(), "f");
    // The motors start uncalibrated: connecting writes the file's calibration, as LeRobot does.
    let sim = Served::start(SimBusConfig {
        calibration: None,
        ..SimBusConfig::default()
    });

    // No calibration file: refused before the bus is even opened.
    let err = So101Arm::connect(arm_config(&sim.port, dir.path(), "nobody", ArmRole::Follower)).unwrap_err();
    assert!(err.to_string().contains("so101 calibrate"), "{err}");

    let mut cfg = arm_config(&sim.port, dir.path(), "f", ArmRole::Follower);
    cfg.max_relative_target = Some([5.0; 6]);
    cfg.watchdog = Some(Duration::from_millis(300));
    // The sim's physical truth is `default_truth` (= the file); once the file is written to the
    // factory-fresh motors, the degrees read equal the simulated joints.
    assert_eq!(cal, default_truth());
    let arm = So101Arm::connect(cfg).unwrap();
    // Hold the first reading for a second so the arm settles under gravity, then compare.
    let first = arm.read_positions().unwrap();
    for _ in 0..30 {
        arm.send_action(&first).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let present = arm.read_positions().unwrap();
    let sim_joints = sim.latest_joints();
    for i in 0..6 {
        assert!(
            (present[i] - f64::from(sim_joints[i])).abs() < 0.5,
            "{i}: {present:?} vs {sim_joints:?}"
        );
    }
    // A far goal is clamped to 5 units from the present position.
    let mut goal = present;
    goal[0] += 40.0;
    let sent = arm.send_action(&goal).unwrap();
    assert!((sent[0] - (present[0] + 5.0)).abs() < 1e-9, "{sent:?}");
    // Joint limits from the calibration: far outside the range is clamped to it.
    let limits = arm.joint_limits();
    let mut outside = present;
    outside[0] = 1e4;
    let mut last = present;
    for _ in 0..100 {
        last = arm.send_action(&outside).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!((last[0] - limits[0].1).abs() < 1e-9, "{last:?} limits {limits:?}");
    let reached = arm.read_positions().unwrap();
    assert!(reached[0] <= limits[0].1 + 1.0, "{reached:?}");
    // Non-finite targets are refused.
    assert!(arm.send_action(&[f64::NAN, 0.0, 0.0, 0.0, 0.0, 0.0]).is_err());
    assert!(matches!(
        arm.send_action(&[0.0; 5]),
        Err(ArmError::ActionLength { .. })
    ));
    // The watchdog turns torque off when commands stop.
    std::thread::sleep(Duration::from_millis(700));
    assert!(matches!(
        arm.send_action(&present),
        Err(ArmError::Watchdog { .. })
    ));
    drop(arm);
    let mut bus = FeetechBus::open(&sim.port, BusOptions::default()).unwrap();
    for id in MOTOR_IDS {
        assert_eq!(bus.read(id, &reg::TORQUE_ENABLE).unwrap(), 0, "motor {id}");
        assert_eq!(bus.read(id, &reg::LOCK).unwrap(), 0, "motor {id}");
    }
}

#[test]
fn torque_goes_off_on_panic_and_on_lost_communication() {
    let dir = tempfile::tempdir().unwrap();
    let cal = calibrated(dir.path(), "f");
    let sim = Served::start(SimBusConfig {
        calibration: Some(cal),
        ..SimBusConfig::default()
    });
    let port = sim.port.clone();
    let cfg = arm_config(&port, dir.path(), "f", ArmRole::Follower);
    let result = std::panic::catch_unwind(move || {
        let arm = So101Arm::connect(cfg).unwrap();
        let p = arm.read_positions().unwrap();
        arm.send_action(&p).unwrap();
        panic!("policy crashed");
    });
    assert!(result.is_err());
    let mut bus = FeetechBus::open(&port, BusOptions::default()).unwrap();
    for id in MOTOR_IDS {
        assert_eq!(
            bus.read(id, &reg::TORQUE_ENABLE).unwrap(),
            0,
            "motor {id} after a panic"
        );
    }
    drop(bus);
    drop(sim);

    // A motor that stops answering mid-run: the driver reports lost communication and turns the
    // others' torque off.
    let sim = Served::start(SimBusConfig {
        calibration: Some(cal),
        faults: Faults {
            silent_motor: Some(5),
            after_packets: 200,
            ..Faults::default()
        },
        ..SimBusConfig::default()
    });
    let arm = So101Arm::connect(arm_config(&sim.port, dir.path(), "f", ArmRole::Follower)).unwrap();
    let mut err = None;
    for _ in 0..500 {
        match arm.read_positions().and_then(|p| arm.send_action(&p)) {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the silent motor is noticed");
    assert!(
        matches!(err, ArmError::LostCommunication(BusError::Timeout { id: 5, .. })),
        "{err}"
    );
    drop(arm);
    let mut bus = FeetechBus::open(&sim.port, BusOptions::default()).unwrap();
    for id in [1, 2, 3, 4, 6] {
        assert_eq!(bus.read(id, &reg::TORQUE_ENABLE).unwrap(), 0, "motor {id}");
    }
}

#[test]
fn leader_reads_and_never_moves() {
    let dir = tempfile::tempdir().unwrap();
    let cal = calibrated(dir.path(), "l");
    let sim = Served::start(SimBusConfig {
        calibration: Some(cal),
        operator: Operator::Sweep,
        sweep_period: 1.0,
        ..SimBusConfig::default()
    });
    let arm = So101Arm::connect(arm_config(&sim.port, dir.path(), "l", ArmRole::Leader)).unwrap();
    let a = arm.read_positions().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b = arm.read_positions().unwrap();
    assert!(
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1.0),
        "the operator moves the leader: {a:?} {b:?}"
    );
    assert!(matches!(arm.send_action(&a), Err(ArmError::LeaderCannotMove(_))));
}

/// The real-arm environment over the simulated bus: reset moves to the start pose at a limited speed,
/// steps are clamped and paced at the control rate, the observation is the calibrated state, and nothing
/// only a simulator knows (reward, success, progress, scene vector) is reported.
#[test]
fn robot_env_resets_to_its_start_pose_and_steps_at_the_control_rate() {
    use toprl_envs::environment::{EnvError, Environment};
    use toprl_envs::robot::{RobotEnv, RobotEnvConfig};
    let dir = tempfile::tempdir().unwrap();
    calibrated(dir.path(), "f");
    let sim = Served::start(SimBusConfig::default());
    let mut cfg = arm_config(&sim.port, dir.path(), "f", ArmRole::Follower);
    cfg.max_relative_target = Some([4.0; 6]);
    let arm = So101Arm::connect(cfg).unwrap();
    // The simulated arm rests at the simulator's home pose; start somewhere else.
    let home = RobotEnvConfig::sim_home_pose();
    let offset = [30.0, 0.0, -20.0, 0.0, 20.0, 10.0];
    let start_pose: [f64; 6] = std::array::from_fn(|i| home[i] + offset[i]);
    let env_cfg = RobotEnvConfig {
        instruction: "reach".into(),
        fps: 30.0,
        max_steps: 15,
        start_pose,
        reset_speed: 60.0,
        reset_tolerance: 4.0,
        reset_timeout: Duration::from_secs(20),
    };
    let mut env = RobotEnv::new(arm, vec![], env_cfg.clone()).unwrap();
    assert!(matches!(env.step(&[0.0; 6]), Err(EnvError::NotReset)));
    let before = env.arm().read_positions().unwrap();
    let far = (0..6)
        .map(|i| (before[i] - start_pose[i]).abs())
        .fold(0.0, f64::max);
    let t0 = Instant::now();
    let (obs, task) = env.reset(0).unwrap();
    let reset_time = t0.elapsed().as_secs_f64();
    assert!(task.is_none() && obs.environment_state.is_none() && obs.images.is_empty());
    for (i, target) in start_pose.iter().enumerate() {
        let d = (f64::from(obs.state[i]) - target).abs();
        assert!(
            d <= 4.0,
            "joint {i} at {} not at the start pose {}",
            obs.state[i],
            start_pose[i]
        );
    }
    // At most 60 units per second: a move of `far` takes at least far / 60 s.
    assert!(
        far > 10.0,
        "the arm started {far} from the start pose; the test needs a real move"
    );
    assert!(reset_time >= far / 60.0 * 0.9, "moved {far} in {reset_time} s");

    // A goal 30 degrees away is clamped to 4 per step; 15 steps at 30 Hz take ~0.5 s, then truncate.
    let mut goal: Vec<f32> = obs.state.to_vec();
    goal[0] += 30.0;
    let t0 = Instant::now();
    let mut steps = 0;
    loop {
        let t = env.step(&goal).unwrap();
        steps += 1;
        assert!(t.reward.is_none() && t.task.is_none() && !t.terminated);
        if steps == 1 {
            assert!(t.clipped, "max_relative_target clamps the first step");
        }
        if t.truncated {
            break;
        }
    }
    assert_eq!(steps, 15);
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        (0.4..2.0).contains(&elapsed),
        "15 steps at 30 Hz took {elapsed} s"
    );
    let moved = env.arm().read_positions().unwrap()[0] - f64::from(obs.state[0]);
    assert!(moved > 15.0, "shoulder_pan moved {moved}");
    assert!(
        matches!(env.step(&goal), Err(EnvError::NotReset)),
        "a truncated episode needs a reset"
    );
    assert!(matches!(
        env.reset(1).and_then(|_| env.step(&[0.0; 5])),
        Err(EnvError::ActionLength { expected: 6, got: 5 })
    ));
    assert!(matches!(
        env.step(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]),
        Err(EnvError::NonFiniteAction { joint: 1, .. })
    ));
    env.disconnect().unwrap();

    // A start pose the arm cannot reach in time is an error naming the joints, not a silent start.
    let mut cfg = arm_config(&sim.port, dir.path(), "f", ArmRole::Follower);
    cfg.max_relative_target = Some([0.01; 6]);
    let arm = So101Arm::connect(cfg).unwrap();
    let mut slow = env_cfg;
    slow.start_pose[0] = start_pose[0] + 40.0;
    slow.reset_timeout = Duration::from_millis(300);
    let stop = Arc::new(AtomicBool::new(false));
    let mut env = RobotEnv::new(arm, vec![], slow)
        .unwrap()
        .with_stop_flag(stop.clone());
    let err = env.reset(0).unwrap_err().to_string();
    assert!(
        err.contains("start pose") && err.contains("shoulder_pan"),
        "{err}"
    );
    // The stop key interrupts the move.
    stop.store(true, Ordering::SeqCst);
    assert!(matches!(env.reset(0), Err(EnvError::Stopped)));
}
