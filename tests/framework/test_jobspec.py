"""Job files: a valid one parses; every kind of bad input names its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.demo import train_demo
from framework.errors import JobSpecError
from framework.jobspec import load_job


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    train_demo(directory)
    return directory


def test_demo_job_parses(demo_dir: Path) -> None:
    spec = load_job(demo_dir / "job.toml")
    assert [m.name for m in spec.models] == ["linear", "logistic"]
    assert spec.models[1].output == "predict_proba" and spec.models[1].proba_class == 1
    assert spec.data.label == "target" and spec.data.rows_per_shard == 50
    assert spec.framework.master == "local" and spec.framework.user  # current user by default
    assert spec.output == (demo_dir / "predictions.csv").resolve()


def variant(demo_dir: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = (demo_dir / "job.toml").read_text()
    assert old in text, old
    target = demo_dir / f"variant-{tmp_path.name}.toml"
    target.write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('kind = "regressor"', 'kind = "ranker"', r"models\[0\] \(linear\)\.kind must be one of regressor, classifier; got 'ranker'"),
        ('path = "linear.joblib"', 'path = "missing.joblib"', r"models\[0\] \(linear\)\.path names 'missing.joblib', which is not a file"),
        ('sha256 = "', 'sha256 = "0', r"models\[0\] \(linear\)\.sha256 must be 64 hex digits"),
        ("rows_per_shard = 50", "rows_per_shard = 0", r"data\.rows_per_shard must be at least 1, got 0"),
        ('integration = "mean"', 'integration = "mean"\nexplain = "yes"', r"job\.explain must be bool, got 'yes'"),
        ("rows_per_shard = 50", 'rows_per_shard = "50"', r"data\.rows_per_shard must be int, got '50'"),
        ('integration = "mean"', 'integration = "average"', r"job\.integration must be one of mean, weighted_mean"),
        ("cpus = 0.5", "cpus = -1", r"models\[0\] \(linear\)\.cpus must be a positive number, got -1"),
        ('output = "predictions.csv"', 'output = "predictions.xlsx"', r"job\.output must end in \.csv, \.npy or \.parquet"),
        ("[framework]", "[framework]\nbogus = 1", r"framework\.bogus is not a known field"),
        ('master = "local"', 'master = "http://m:5050"', r"framework\.master must be host:port"),
        ('master = "local"', 'master = "local"\nspeculation_factor = -1',
         r"framework\.speculation_factor must be a non-negative number, got -1"),
        ('master = "local"', 'master = "local"\nexecutors = "per_task"',
         r"framework\.executors must be one of shared, per_model; got 'per_task'"),
        ('output = "predict_proba"', 'output = "predict_proba"\nconstraints = { spread_over = 0 }', r"constraints\.spread_over must be at least 1"),
        ('name = "logistic"', 'name = "linear"', r"models has two models named 'linear'"),
        ("proba_class = 1", "proba_class = 1\nfeatures = []", r"models\[1\] \(logistic\)\.features must be a non-empty list"),
        ("proba_class = 1", 'proba_class = 1\nfeatures = ["f1", "f1"]', r"\(logistic\)\.features names a column twice: \['f1'\]"),
        ("proba_class = 1", 'proba_class = 1\nfeatures = "f1"', r"\(logistic\)\.features must be list"),
    ],
)
def test_bad_fields_are_named(demo_dir: Path, tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        load_job(variant(demo_dir, tmp_path, old, new))


def test_sha256_mismatch_names_the_file(demo_dir: Path, tmp_path: Path) -> None:
    text = (demo_dir / "job.toml").read_text()
    start = text.index('sha256 = "') + len('sha256 = "')
    broken = text[:start] + "f" * 64 + text[start + 64:]
    (demo_dir / "broken-sha.toml").write_text(broken)
    with pytest.raises(JobSpecError, match=r"sha256 does not match linear\.joblib \(file has [0-9a-f]{64}\)"):
        load_job(demo_dir / "broken-sha.toml")


def test_malformed_toml(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text("[job\nname = 1\n")
    with pytest.raises(JobSpecError, match=r"job\.toml: not valid TOML"):
        load_job(tmp_path / "job.toml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="job file not found"):
        load_job(tmp_path / "nope.toml")


def test_missing_sections(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text('[job]\nname = "x"\noutput = "o.csv"\n')
    with pytest.raises(JobSpecError, match="models is required"):
        load_job(tmp_path / "job.toml")


def test_stacking_needs_its_table(demo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match=r'job\.integration is "stacking", which needs a \[stacking\] table'):
        load_job(variant(demo_dir, tmp_path, 'integration = "mean"', 'integration = "stacking"'))


def with_pricing(demo_dir: Path, tmp_path: Path, pricing: str) -> Path:
    target = demo_dir / f"pricing-{tmp_path.name}.toml"
    target.write_text((demo_dir / "job.toml").read_text() + "\n[pricing]\n" + pricing + "\n")
    return target


def test_pricing_parses_into_the_packers_tables(demo_dir: Path, tmp_path: Path) -> None:
    spec = load_job(with_pricing(demo_dir, tmp_path, 'by_hostname = { "gpu-1" = 4 }\n'
                                 'by_attribute = { instance = { spot = 0.3, 1 = 2 } }\nunit_prices = { cpus = 0.5 }'))
    assert spec.pricing.by_hostname == {"gpu-1": 4.0}
    assert spec.pricing.by_attribute == {"instance": {"spot": 0.3, "1": 2.0}}
    assert spec.cost_model.unit_prices.cpus == 0.5 and spec.cost_model.unit_prices.mem == 0.0


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        ('by_attribute = { instance = { spot = "cheap" } }', r"pricing\.by_attribute\.instance\.spot must be a non-negative number, got 'cheap'"),
        ("by_attribute = { instance = 3 }", r"pricing\.by_attribute\.instance must be a table of value = price, got 3"),
        ('unit_prices = { cpus = "1" }', r"pricing\.unit_prices\.cpus must be a non-negative number, got '1'"),
        ("unit_prices = { mem = -1 }", r"pricing\.unit_prices\.mem must be a non-negative number, got -1"),
        ("unit_prices = { ram = 1 }", r"pricing\.unit_prices\.ram is not a resource"),
        ("by_hostname = { a1 = true }", r"pricing\.by_hostname\.a1 must be a non-negative number, got True"),
        ("by_hostname = { a1 = nan }", r"pricing\.by_hostname\.a1 must be a non-negative number, got nan"),
    ],
)
def test_bad_prices_are_named(demo_dir: Path, tmp_path: Path, pricing: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        load_job(with_pricing(demo_dir, tmp_path, pricing))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('integration = "mean"', 'integration = "median"\n', None),
        ('name = "linear"', 'name = "linear"\nweight = 2', r"models\[0\] \(linear\)\.weight must be 1 for integration "
                                                            r"= \"median\" \(a median is unweighted\), got 2"),
        ('name = "linear"', 'name = "linear"\nweight = 0', r"models\[\*\]\.weight are 0 for linear, and job\.min_members "
                                                            r"= 1 lets those alone be integrated"),
        ('name = "linear"', 'name = "linear"\nallow_nan = "yes"', r"models\[0\] \(linear\)\.allow_nan must be bool"),
        ('report = "report.json"', 'report = "predictions.csv"', r"job\.report names the same file as job\.output"),
        ('output = "predictions.csv"', 'output = "linear.npy"', None),
        ('output = "predictions.csv"', 'output = "."', r"job\.output must end in \.csv, \.npy or \.parquet"),
        ('report = "report.json"', 'report = "sub/report.json"', r"job\.report is in \S+/sub, which does not exist"),
        ('master = "local"', 'master = "zk://a:2181,b:2181/mesos"', None),
        ('master = "local"', 'master = "m:70000"', r"framework\.master must be host:port, zk://host:2181/mesos or "
                                                   r"\"local\": must have a port from 1 to 65535 after 'm', got '70000'"),
        ('master = "local"', 'master = "zk://a:2181"', r"framework\.master .* a ZooKeeper master needs servers and a path"),
        ('integration = "mean"', 'integration = "stacking"\nmin_members = 1',
         r'job\.min_members is 1, but integration = "stacking" needs every member \(it cannot combine a subset of '
         r"them\); remove it or set it to 2"),
    ],
    ids=["median-unit", "median-weight", "zero-weight-alone", "allow-nan-type", "report-is-output", "npy-output",
         "output-dot", "report-dir", "zk-master", "bad-port", "zk-no-path", "stacking-subset"],
)
def test_output_weight_and_master_fields(demo_dir: Path, tmp_path: Path, old: str, new: str,
                                         message: str | None) -> None:
    path = variant(demo_dir, tmp_path, old, new)
    if "weight = 0" in new:
        path.write_text(path.read_text().replace('integration = "mean"', 'integration = "weighted_mean"\nmin_members = 1'))
    if "weight = 2" in new:
        path.write_text(path.read_text().replace('integration = "mean"', 'integration = "median"'))
    if message is None:
        load_job(path)
    else:
        with pytest.raises(JobSpecError, match=message):
            load_job(path)


def test_unwritable_output_directory_is_named(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only directories cannot be made as root (permission bits do not stop it), so the
    refusal is exercised with ``os.access`` answering as it does for a non-root user there."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == demo_dir else real_access(path, mode))
    with pytest.raises(JobSpecError, match=r"job\.output is in \S+, which is not writable by "):
        load_job(demo_dir / "job.toml")


def test_master_parser() -> None:
    from framework.jobspec import parse_master

    assert parse_master("local").kind == "local"
    assert parse_master("10.0.0.5").hosts == (("10.0.0.5", 5050),)
    zk = parse_master("zk://user:pw@z1:2181,z2/mesos")
    assert (zk.kind, zk.hosts, zk.path) == ("zk", (("z1", 2181), ("z2", 2181)), "/mesos")
    assert not zk.loopback and parse_master("localhost:5050").loopback and parse_master("zk://127.0.0.1/m").loopback
    for bad in ("http://m:5050", "m:1:2", "zk:///mesos", "", "m:"):
        with pytest.raises(ValueError):
            parse_master(bad)


def test_with_master_validates_the_flag(demo_dir: Path) -> None:
    from framework.jobspec import with_master

    spec = load_job(demo_dir / "job.toml")
    assert with_master(spec, "zk://z:2181/mesos").framework.master == "zk://z:2181/mesos"
    with pytest.raises(JobSpecError, match=r"^--master must be host:port"):
        with_master(spec, "https://m")
def test_secret_from_a_file_or_an_environment_variable(demo_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (demo_dir / "secret.txt").write_text("s3cret-from-file\n")
    from_file = variant(demo_dir, tmp_path, 'name = "mesos-ensemble-demo"',
                        'name = "mesos-ensemble-demo"\nprincipal = "me"\nsecret_file = "secret.txt"')
    settings = load_job(from_file).framework
    assert (settings.principal, settings.secret) == ("me", "s3cret-from-file")
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("DEMO_SECRET", "s3cret-from-env")
    from_env = variant(demo_dir, tmp_path, 'name = "mesos-ensemble-demo"',
                       'name = "mesos-ensemble-demo"\nprincipal = "me"\nsecret_env = "DEMO_SECRET"')
    assert load_job(from_env).framework.secret == "s3cret-from-env"
    monkeypatch.delenv("DEMO_SECRET")
    with pytest.raises(JobSpecError, match=r"framework.secret_env names the environment variable 'DEMO_SECRET', "
                                           r"which is not set or empty"):
        load_job(from_env)
    both = variant(demo_dir, tmp_path, 'name = "mesos-ensemble-demo"',
                   'name = "mesos-ensemble-demo"\nprincipal = "me"\nsecret = "x"\nsecret_env = "DEMO_SECRET"')
    with pytest.raises(JobSpecError, match=r"framework.secret_env and secret are both given; use one"):
        load_job(both)
    number = variant(demo_dir, tmp_path, 'name = "mesos-ensemble-demo"',
                     'name = "mesos-ensemble-demo"\nprincipal = "me"\nsecret = 918273645')
    with pytest.raises(JobSpecError) as error:
        load_job(number)
    assert "918273645" not in str(error.value) and "framework.secret must be a string" in str(error.value)


@pytest.mark.parametrize(("ports", "message"), [
    ('"31000-32000"', r'local_cluster\.agents\[0\]\.ports must be port ranges within 0-65535 like "\[31000-32000\]" '
                      r"\(or \"\[\]\"\), got '31000-32000'"),
    ('"[70000-70001]"', r"local_cluster\.agents\[0\]\.ports must be port ranges .*got '\[70000-70001\]'"),
    ("31000", r"local_cluster\.agents\[0\]\.ports must be str, got 31000"),
])
def test_local_cluster_agent_ports_are_mesos_ranges(demo_dir: Path, tmp_path: Path, ports: str, message: str) -> None:
    good = variant(demo_dir, tmp_path, "[framework]",
                   '[local_cluster]\nagents = [{ ports = "[31000-31004, 31010-31010]" }, {}]\n\n[framework]')
    assert [a.get("ports") for a in load_job(good).local_cluster.agents] == ["[31000-31004, 31010-31010]", None]
    bad = variant(demo_dir, tmp_path, "[framework]", f"[local_cluster]\nagents = [{{ ports = {ports} }}]\n\n[framework]")
    with pytest.raises(JobSpecError, match=message):
        load_job(bad)
