//! The real-arm commands end to end against `so101 sim-bus` (a simulated SO-101 on a pseudo-terminal):
//! calibrate, teleop, record (and resume), run, faults, and LeRobot's own follower driver on our bus.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use toprl_envs::dataset::LeRobotDataset;
use toprl_envs::robot::calibration::Calibration;
use toprl_envs::robot::sim_bus::default_truth;

/// The tests of this file run one at a time: each starts simulated buses and LeRobot's driver allows a
/// status packet only ~50 ms, which a 2-core CI machine running several MuJoCo buses at once can miss.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn so101() -> Command {
    Command::new(env!("CARGO_BIN_EXE_so101"))
}

/// A running `so101 sim-bus`, killed on drop; its `state:` lines are collected.
struct SimBus {
    child: Child,
    port: String,
    states: mpsc::Receiver<Value>,
}

impl SimBus {
    fn start(args: &[&str]) -> Self {
        let mut child = so101()
            .arg("sim-bus")
            .args(args)
            .args(["--status-every", "0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting so101 sim-bus");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("a first line")
            .expect("reading the port line");
        let port = first
            .strip_prefix("port: ")
            .expect("`port: PATH` first")
            .to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("state: ")
                    && tx.send(serde_json::from_str::<Value>(json).unwrap()).is_err()
                {
                    break;
                }
            }
        });
        SimBus {
            child,
            port,
            states: rx,
        }
    }

    /// The newest state line (waits for one printed after this call).
    fn state(&self) -> Value {
        let _ = self.states.try_iter().count();
        self.states
            .recv_timeout(Duration::from_secs(10))
            .expect("a state line")
    }

    fn joints(&self) -> Vec<f64> {
        self.state()["joints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    fn torque(&self) -> Vec<bool> {
        self.state()["torque"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect()
    }
}

impl Drop for SimBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built-in arm's calibration saved as `<dir>/<id>.json`, and the file's path.
fn calibration_file(dir: &Path, id: &str) -> PathBuf {
    let path = dir.join(format!("{id}.json"));
    default_truth().save(&path).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An untrained state-only policy (6 joints in, 6 out) saved as a toprl checkpoint at `dir`.
fn save_state_policy(dir: &Path, cfg: toprl_policies::gaussian::GaussianMlpConfig) {
    use toprl_policies::{Normalizer, PolicyConfig, TrainConfig, Trainer, cpu_device};
    Trainer::new(
        PolicyConfig::Gaussian(cfg),
        Normalizer::identity(6, 6),
        TrainConfig::default(),
        &cpu_device(),
    )
    .expect("a valid policy config")
    .save(dir)
    .expect("checkpoint written");
}

#[test]
fn calibrate_writes_lerobots_file_in_lerobots_folder() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    // Factory-fresh motors; the simulated operator sweeps the joints through their ranges.
    let sim = SimBus::start(&["--operator", "sweep", "--sweep-period", "2.5"]);
    let home = tmp.path().join("lerobot-home");
    let mut child = so101()
        .args(["calibrate", "--port", &sim.port, "--id", "my_arm"])
        .env("HF_LEROBOT_HOME", &home)
        .env_remove("HF_LEROBOT_CALIBRATION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"\n").unwrap(); // the arm is "centred"
    std::thread::sleep(Duration::from_millis(4000)); // joints sweep through their ranges
    stdin.write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = home.join("calibration/robots/so_follower/my_arm.json");
    assert!(String::from_utf8_lossy(&out.stdout).contains(path.to_str().unwrap()));
    let cal = Calibration::load(&path).unwrap();
    let truth = default_truth();
    assert_eq!((cal.motors[4].range_min, cal.motors[4].range_max), (0, 4095));
    for i in [0, 1, 2, 3, 5] {
        let m = cal.motors[i];
        let t = truth.motors[i];
        // The sweep covers most of each range: the recorded span is a good part of the true one.
        assert!(
            (m.range_max - m.range_min) as f64 > 0.5 * (t.range_max - t.range_min) as f64,
            "motor {i}: {m:?} vs {t:?}"
        );
    }
}

#[test]
fn teleop_follows_the_leader_and_leaves_torque_off() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (fdir, ldir) = (tmp.path().join("f"), tmp.path().join("l"));
    let file = calibration_file(&fdir, "follower");
    calibration_file(&ldir, "leader");
    let follower = SimBus::start(&["--calibration", file.to_str().unwrap()]);
    let leader = SimBus::start(&[
        "--leader",
        "--calibration",
        file.to_str().unwrap(),
        "--sweep-period",
        "6",
    ]);
    let start = follower.joints();
    let out = so101()
        .args(["teleop", "--port", &follower.port, "--id", "follower"])
        .arg("--calibration-dir")
        .arg(&fdir)
        .args(["--leader-port", &leader.port, "--leader-id", "leader"])
        .arg("--leader-calibration-dir")
        .arg(&ldir)
        .args(["--duration", "3", "--max-relative-target", "30"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["steps"].as_u64().unwrap() >= 45, "{summary}");
    let err = summary["mean_abs_tracking_error"].as_f64().unwrap();
    assert!(err < 8.0, "tracking error {err}: {summary}");
    let end = follower.joints();
    let moved = start
        .iter()
        .zip(&end)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 10.0, "the follower moved {moved}: {start:?} -> {end:?}");
    assert_eq!(follower.torque(), vec![false; 6]);
}

#[test]
fn record_writes_and_resumes_a_lerobot_dataset() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (fdir, ldir) = (tmp.path().join("f"), tmp.path().join("l"));
    let file = calibration_file(&fdir, "follower");
    calibration_file(&ldir, "leader");
    let follower = SimBus::start(&["--calibration", file.to_str().unwrap()]);
    let leader = SimBus::start(&[
        "--leader",
        "--calibration",
        file.to_str().unwrap(),
        "--sweep-period",
        "2",
    ]);
    let dataset = tmp.path().join("pick");
    let record = |episodes: &str, resume: bool| {
        let mut cmd = so101();
        cmd.args(["record", "--port", &follower.port, "--id", "follower"])
            .arg("--calibration-dir")
            .arg(&fdir)
            .args(["--leader-port", &leader.port, "--leader-id", "leader"])
            .arg("--leader-calibration-dir")
            .arg(&ldir)
            .arg("--dataset")
            .arg(&dataset)
            .args(["--task", "pick up the cube", "--episodes", episodes])
            .args(["--episode-time", "1", "--reset-time", "0.3"])
            .stdin(Stdio::null());
        if resume {
            cmd.arg("--resume");
        }
        cmd.output().unwrap()
    };
    let out = record("2", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let ds = LeRobotDataset::open(&dataset).unwrap();
    assert_eq!(ds.num_episodes(), 2);
    let first = ds.episode(0).unwrap();
    assert_eq!(first.instruction, "pick up the cube");
    assert!((25..=31).contains(&first.len()), "{} frames", first.len());
    // The action is the leader's, which leads the follower's state: they differ while moving.
    let diff: f32 = first
        .states
        .iter()
        .zip(&first.actions)
        .map(|(s, a)| s.iter().zip(a).map(|(x, y)| (x - y).abs()).sum::<f32>())
        .sum();
    assert!(diff > 1.0, "actions equal states");
    // A second run without --resume refuses to overwrite.
    let again = record("1", false);
    assert!(
        !again.status.success() && stderr(&again).contains("--resume"),
        "{}",
        stderr(&again)
    );
    let out = record("1", true);
    assert!(out.status.success(), "{}", stderr(&out));
    let ds = LeRobotDataset::open(&dataset).unwrap();
    assert_eq!(ds.num_episodes(), 3);
    assert_eq!(
        ds.episode(0).unwrap().actions,
        first.actions,
        "resumed episodes are kept as they were"
    );
    assert_eq!(follower.torque(), vec![false; 6]);
}

/// Cameras on `record` and `run`: this build has no V4L2 capture (the `v4l` feature is off), so a camera
/// is refused with the rebuild hint before anything connects or is written; a policy fed the wrong number
/// of cameras is refused naming both counts; a malformed flag is a usage error.
#[test]
fn cameras_are_checked_before_the_arm_moves_or_a_dataset_is_written() {
    use toprl_policies::gaussian::GaussianMlpConfig;
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tmp.path().join("ds");
    let out = so101()
        .args([
            "record",
            "--port",
            "/dev/null",
            "--id",
            "f",
            "--leader-port",
            "/dev/null",
        ])
        .args([
            "--leader-id",
            "l",
            "--task",
            "pick",
            "--camera",
            "front=/dev/video0@320x240",
        ])
        .arg("--dataset")
        .arg(&dataset)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("--features toprl-envs/v4l"),
        "{err}"
    );
    assert!(err.contains("/dev/video0"), "{err}");
    assert!(!dataset.exists(), "nothing written before the cameras open");
    for bad in [
        "front",
        "front=",
        "front=/dev/video0@640",
        "fr ont=/dev/video0",
        "front=/dev/video0@8x8",
    ] {
        let out = so101()
            .args([
                "record",
                "--port",
                "p",
                "--id",
                "f",
                "--leader-port",
                "p",
                "--leader-id",
                "l",
            ])
            .args(["--task", "t", "--camera", bad])
            .arg("--dataset")
            .arg(&dataset)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains("--camera"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let policy = tmp.path().join("policy");
    save_state_policy(&policy, GaussianMlpConfig::new(6, 6).with_hidden(vec![8]));
    let out = so101()
        .args([
            "run",
            "--port",
            "/dev/null",
            "--id",
            "f",
            "--task",
            "t",
            "--camera",
            "front=/dev/video0",
        ])
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("sees 0 camera(s), 1 --camera given"),
        "{err}"
    );
}

#[test]
fn run_drives_the_follower_with_a_policy() {
    let _serial = serial();
    use toprl_policies::gaussian::GaussianMlpConfig;
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    save_state_policy(
        &policy,
        GaussianMlpConfig::new(6, 6)
            .with_chunk_size(3)
            .with_hidden(vec![16]),
    );
    let fdir = tmp.path().join("f");
    let file = calibration_file(&fdir, "follower");
    let follower = SimBus::start(&["--calibration", file.to_str().unwrap()]);
    let start = follower.joints();
    let out = so101()
        .args(["run", "--port", &follower.port, "--id", "follower"])
        .arg("--calibration-dir")
        .arg(&fdir)
        .arg("--policy")
        .arg(&policy)
        .args([
            "--task",
            "pick up the cube",
            "--episode-time",
            "2",
            "--max-relative-target",
            "3",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["steps"].as_u64().unwrap() >= 40, "{summary}");
    let end = follower.joints();
    let moved = start
        .iter()
        .zip(&end)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 5.0, "the follower moved {moved}: {start:?} -> {end:?}");
    assert_eq!(follower.torque(), vec![false; 6]);
    // A policy needing a camera is refused with a reason.
    let bad = so101()
        .args([
            "run",
            "--port",
            &follower.port,
            "--id",
            "follower",
            "--policy",
            "/no/such/policy",
            "--task",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success() && stderr(&bad).contains("/no/such/policy"));
}

#[test]
fn faults_stop_the_arm_with_a_clear_error() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (fdir, ldir) = (tmp.path().join("f"), tmp.path().join("l"));
    let file = calibration_file(&fdir, "follower");
    calibration_file(&ldir, "leader");
    let file = file.to_str().unwrap();
    let leader = SimBus::start(&["--leader", "--calibration", file]);
    let teleop = |port: &str, id: &str| {
        so101()
            .args(["teleop", "--port", port, "--id", id])
            .arg("--calibration-dir")
            .arg(&fdir)
            .args(["--leader-port", &leader.port, "--leader-id", "leader"])
            .arg("--leader-calibration-dir")
            .arg(&ldir)
            .args(["--duration", "20"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A motor that stops answering mid-run: lost communication, torque off on the others.
    let silent = SimBus::start(&[
        "--calibration",
        file,
        "--silent-motor",
        "3",
        "--fault-after",
        "400",
    ]);
    let out = teleop(&silent.port, "follower");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("motor 3") && err.contains("torque turned off"),
        "{err}"
    );
    let torque = silent.torque();
    assert_eq!(
        [torque[0], torque[1], torque[3], torque[4], torque[5]],
        [false; 5]
    );
    // A motor with the wrong model number is refused at connect.
    let wrong = SimBus::start(&["--calibration", file, "--wrong-model", "2"]);
    let out = teleop(&wrong.port, "follower");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("model number 1234, expected 777"),
        "{}",
        stderr(&out)
    );
    // Corrupt replies from one motor.
    let corrupt = SimBus::start(&["--calibration", file, "--corrupt-motor", "4"]);
    let out = teleop(&corrupt.port, "follower");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("motor 4: corrupt reply"),
        "{}",
        stderr(&out)
    );
    // An arm without a calibration file is refused.
    let out = teleop(&wrong.port, "never_calibrated");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("so101 calibrate"), "{}", stderr(&out));
}

#[test]
fn lerobots_follower_driver_moves_the_simulated_arm() {
    let _serial = serial();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-lerobot/bin/python");
    assert!(
        python.exists(),
        "LeRobot's Python is missing at {}: run scripts/setup.sh (it installs .venv-lerobot with lerobot[feetech]==0.4.4)",
        python.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = calibration_file(tmp.path(), "sim_arm");
    let sim = SimBus::start(&["--calibration", file.to_str().unwrap()]);
    let start = sim.joints();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lerobot/so101_follower_on_sim_bus.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&sim.port)
        .arg(tmp.path())
        .arg("sim_arm")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = v["before"]["shoulder_pan.pos"].as_f64().unwrap();
    let after = v["after"]["shoulder_pan.pos"].as_f64().unwrap();
    // LeRobot reads the simulated joint angles in degrees.
    assert!(
        (before - start[0]).abs() < 0.2,
        "LeRobot read {before}, the simulator had {}",
        start[0]
    );
    assert!(
        (after - (before + 15.0)).abs() < 2.0,
        "shoulder_pan {before} -> {after}"
    );
    let gripper = v["after"]["gripper.pos"].as_f64().unwrap();
    assert!((gripper - 60.0).abs() < 4.0, "gripper {gripper}");
    let end = sim.joints();
    assert!(
        (end[0] - after).abs() < 1.0,
        "the simulator's pan {} vs LeRobot's {after}",
        end[0]
    );
    // LeRobot's disconnect turned torque off.
    assert_eq!(sim.torque(), vec![false; 6]);
}

/// An experiment with a `[robot]` table: `train --check` validates the port and the calibration by field,
/// and the run evaluates its policy on the simulated arm (real protocol on a pseudo-terminal) instead of
/// MuJoCo, writing its usual outputs with success reported as not measured.
#[test]
fn an_experiment_evaluates_on_the_robot_table_arm() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let fdir = tmp.path().join("f");
    calibration_file(&fdir, "follower");
    std::fs::write(fdir.join("broken.json"), "{\"shoulder_pan\": {\"id\": 1}}").unwrap();
    let follower = SimBus::start(&["--calibration", fdir.join("follower.json").to_str().unwrap()]);
    let base = "[task]\nname = \"reach\"\nmax_steps = 20\ncameras = [\"front\"]\nimage_size = 32\n\
                [data]\nsource = \"sim\"\nepisodes = 2\nnoise_levels = [0.0]\n\
                [policy]\nkind = \"gaussian\"\nchunk = 2\n[policy.network]\nhidden = [8]\n\
                [train]\nsteps = 4\nbatch_size = 4\neval_every = 2\n[eval]\nepisodes = 2\n\
                [awr]\niterations = 1\nrollouts = 1\npolicy_steps = 2\nvalue_steps = 2\n\
                [[arms]]\nname = \"bc\"\nreward = \"none\"\n\
                [[arms]]\nname = \"awr\"\nreward = \"none\"\nalgorithm = \"awr\"\n";
    let robot = |port: &str, id: &str| {
        format!(
            "{base}[robot]\nport = {port:?}\nid = {id:?}\ncalibration_dir = {:?}\nepisode_seconds = 0.5\n\
             max_relative_target = 5.0\nreset_speed = 90.0\noperator_reset = false\nsuccess = \"none\"\n",
            fdir.to_str().unwrap()
        )
    };
    let train = |config: &str, name: &str, extra: &[&str]| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        Command::new(env!("CARGO_BIN_EXE_train"))
            .arg(&path)
            .arg("--out")
            .arg(tmp.path().join(format!("run-{name}")))
            .args(["--threads", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    // --check names the field: a port that does not exist, an id without a calibration file, a value.
    for (name, config, field) in [
        ("noport", robot("/dev/no-such-arm", "follower"), "robot.port"),
        ("noid", robot(&follower.port, "stranger"), "robot.calibration_dir"),
        ("badcal", robot(&follower.port, "broken"), "broken.json"),
        (
            "badmax",
            robot(&follower.port, "follower")
                .replace("max_relative_target = 5.0", "max_relative_target = [1.0, 2.0]"),
            "robot.max_relative_target",
        ),
        (
            "awrsparse",
            robot(&follower.port, "follower").replacen("reward = \"none\"", "reward = \"sparse\"", 2),
            "arms.awr.reward",
        ),
        (
            "nodetector",
            robot(&follower.port, "follower").replace("success = \"none\"", "success = \"topreward\""),
            "robot.success_threshold",
        ),
        (
            "noreward",
            robot(&follower.port, "follower").replace(
                "success = \"none\"",
                "success = \"topreward\"\nsuccess_threshold = -1.0",
            ),
            "robot.success",
        ),
    ] {
        let out = train(&config, name, &["--check"]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(field), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let config = robot(&follower.port, "follower");
    let check = train(&config, "ok", &["--check"]);
    assert!(check.status.success(), "{}", stderr(&check));

    let start = follower.joints();
    let out = train(&config, "ok", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = tmp.path().join("run-ok");
    let result: Value =
        serde_json::from_slice(&std::fs::read(run.join("runs/bc/seed-0/result.json")).unwrap()).unwrap();
    assert!(
        result["success"].is_null(),
        "success is not measured on the arm: {result}"
    );
    assert!(result["mean_return"].is_null(), "{result}");
    assert!(result["curve"].as_array().unwrap().is_empty(), "{result}");
    assert!(run.join("runs/bc/seed-0/checkpoint/policy.json").exists());
    // The AWR arm rolled out on the arm too (one iteration) and evaluated there.
    let awr: Value =
        serde_json::from_slice(&std::fs::read(run.join("runs/awr/seed-0/result.json")).unwrap()).unwrap();
    assert!(awr["success"].is_null(), "{awr}");
    assert!(run.join("runs/awr/seed-0/checkpoint/value").exists());
    assert!(run.join("results.md").exists() && run.join("results.json").exists());
    // The arm went to the start pose (the simulator's, in LeRobot units) and the policy moved it; torque
    // is off once the run ended.
    let end = follower.joints();
    let moved = start
        .iter()
        .zip(&end)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 5.0, "the arm moved {moved}: {start:?} -> {end:?}");
    assert_eq!(follower.torque(), vec![false; 6]);

    // With the operator in the loop (the defaults): before each evaluation episode the scene is reset and
    // Enter pressed; Enter during the first episode ends it early; the operator answers y, then n.
    let operated = robot(&follower.port, "follower")
        .replace("operator_reset = false\nsuccess = \"none\"\n", "")
        .replace("steps = 4\n", "steps = 2\n")
        .replace(
            "[[arms]]\nname = \"awr\"\nreward = \"none\"\nalgorithm = \"awr\"\n",
            "",
        );
    let path = tmp.path().join("operated.toml");
    std::fs::write(&path, &operated).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&path)
        .arg("--out")
        .arg(tmp.path().join("run-operated"))
        .args(["--threads", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"\n\ny\n\nn\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("reset the scene") && err.contains("did the arm succeed"),
        "{err}"
    );
    assert_eq!(err.matches("episode ended by the operator").count(), 1, "{err}");
    let result: Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("run-operated/runs/bc/seed-0/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["success"], 0.5, "one y, one n: {result}");
    // No operator (standard input closed): the run stops with a message saying what to set.
    let out = train(&operated, "nooperator", &[]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("operator_reset = false"),
        "{err}"
    );
    assert_eq!(follower.torque(), vec![false; 6]);
}
