"""Export round trip: a real SavedModel, loaded in-process, both signatures called."""

import json
import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ml import export  # noqa: E402
from ml.contract import check_signatures, check_version_dir  # noqa: E402
from ml.synthetic import generate_storefront  # noqa: E402
from ml.train import TrainParams, train_and_export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repository = tmp_path_factory.mktemp("models")
    shop = generate_storefront(n_users=200, n_items=120, n_events=12_000, seed=5)
    result = train_and_export(
        shop.interactions(), repository=repository, name="shop", params=TrainParams()
    )
    loaded = tf.saved_model.load(str(result.version_dir))
    return result, loaded, repository


def _recommend(loaded, history, weights, k):
    out = loaded.signatures["recommend"](
        history=tf.constant(history, tf.string),
        history_weights=tf.constant(weights, tf.float32),
        k=tf.constant(k, tf.int32),
    )
    ids = [[value.decode() for value in row] for row in out["item_ids"].numpy()]
    return ids, out["scores"].numpy()


def test_version_layout_contract_card_and_no_leftovers(exported):
    result, _, repository = exported

    assert result.version == 1
    assert result.version_dir == repository / "shop" / "1"
    assert check_version_dir(result.version_dir) == []
    assert [p.name for p in (repository / "shop").iterdir()] == ["1"]  # no .tmp-* left
    card = json.loads((result.version_dir / "assets.extra" / "model_card.json").read_text())
    assert set(card["offline_evaluation"]["metrics"]) == {"model", "popularity", "ease"}
    assert 100 < card["data"]["users"] <= 200  # shoppers without events do not count
    assert card["data"]["items"] == result.model.n_items
    assert card["data"]["first_event"] <= card["data"]["last_event"]
    assert card["training_seconds"] >= 0
    assert "recommend" in card["signatures"]


def test_recommend_matches_numpy_and_excludes_history(exported):
    result, loaded, _ = exported
    model = result.model
    history = [str(model.item_ids[i]) for i in (3, 7, 11)]

    ids, scores = _recommend(loaded, [history], [[1.0, 2.0, 8.0]], 10)

    assert not set(history) & set(ids[0])
    assert np.all(np.diff(scores[0]) <= 0)
    query = model.query(np.array([0, 3]), np.array([3, 7, 11]), np.array([1.0, 2.0, 8.0]))
    expected = model.scores(query)[0]
    expected[[3, 7, 11]] = -np.inf
    top = np.argsort(-expected)[:10]
    np.testing.assert_allclose(scores[0], expected[top], rtol=1e-4, atol=1e-5)
    assert ids[0][:3] == [str(model.item_ids[i]) for i in top[:3]]


def test_unknown_ids_and_padding_side_do_not_change_the_answer(exported):
    result, loaded, _ = exported
    a, b = (str(result.model.item_ids[i]) for i in (1, 2))

    plain, _ = _recommend(loaded, [[a, b]], [[1.0, 4.0]], 5)
    left, _ = _recommend(loaded, [["", "nope", a, b]], [[0.0, 1.0, 1.0, 4.0]], 5)
    right, _ = _recommend(loaded, [[a, b, "", ""]], [[1.0, 4.0, 0.0, 0.0]], 5)

    assert plain == left == right


def test_empty_history_gets_popular_items_and_k_is_clipped(exported):
    result, loaded, _ = exported
    model = result.model
    popular = [str(model.item_ids[i]) for i in np.argsort(-model.popularity, kind="stable")[:5]]

    ids, _ = _recommend(loaded, [["", ""], ["unknown", ""]], [[0.0, 0.0], [1.0, 0.0]], 5)
    assert ids[0] == ids[1]
    assert set(ids[0][:3]) <= set(popular)  # ties in popularity may swap neighbours

    everything, scores = _recommend(loaded, [[str(model.item_ids[0])]], [[1.0]], 10_000)
    assert len(everything[0]) == model.n_items
    assert everything[0][-1] == "" and scores[0][-1] == 0.0  # the history item: padding


def test_similar_excludes_the_item_and_marks_unknown_ids(exported):
    result, loaded, _ = exported
    item = str(result.model.item_ids[4])

    out = loaded.signatures["similar"](
        item_ids=tf.constant([item, "no-such-item"]), k=tf.constant(6, tf.int32)
    )
    ids = [[value.decode() for value in row] for row in out["item_ids"].numpy()]

    assert len(ids[0]) == 6 and item not in ids[0] and "" not in ids[0]
    assert ids[1] == [""] * 6
    assert np.all(out["scores"].numpy()[1] == 0.0)


def test_vocabulary_lives_inside_the_model(exported, tmp_path):
    result, _, _ = exported
    copy = tmp_path / "elsewhere"
    shutil.copytree(result.version_dir, copy)

    loaded = tf.saved_model.load(str(copy))
    ids, _ = _recommend(loaded, [[str(result.model.item_ids[0])]], [[1.0]], 3)

    assert all(i in set(result.model.item_ids.tolist()) for i in ids[0])


def test_warmup_requests_parse_and_replay_against_the_model(exported):
    result, loaded, _ = exported

    logs = export.read_warmup_requests(
        result.version_dir / "assets.extra/tf_serving_warmup_requests"
    )

    assert {log.predict_log.request.model_spec.signature_name for log in logs} == {
        "recommend",
        "serving_default",
        "similar",
    }
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "shop"
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["item_ids"].shape[1] == 10


def test_versions_count_up_from_the_largest_integer_folder(exported, tmp_path):
    result, _, _ = exported
    (tmp_path / "m" / "7").mkdir(parents=True)
    (tmp_path / "m" / "not-a-version").mkdir()

    path = export.export_model(result.model, repository=tmp_path, name="m")

    assert path.name == "8"
    assert export.next_version(tmp_path / "m") == 9


def test_a_failed_export_leaves_no_version_behind(exported, tmp_path, monkeypatch):
    result, _, _ = exported

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_warmup_requests", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_model(result.model, repository=tmp_path, name="m")

    assert list((tmp_path / "m").iterdir()) == []


def test_contract_check_names_wrong_signatures(tmp_path):
    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="history")])
        def recommend(self, history):
            return {"item_ids": tf.as_string(history)}

    module = Wrong()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"recommend": module.recommend})

    problems = check_signatures(tmp_path / "1")

    assert "signature 'similar' is missing" in problems
    assert "recommend: input history is DT_INT64, expected DT_STRING" in problems
    assert any("missing input(s) history_weights, k" in p for p in problems)
    assert any("missing output(s) scores" in p for p in problems)
    assert check_signatures(tmp_path / "nothing") != []


def test_cli_trains_evaluates_and_exports_the_next_version(tmp_path, capsys):
    from ml import train as train_cli

    shop = generate_storefront(n_users=120, n_items=80, n_events=6_000, seed=2)
    events = shop.write_events_csv(tmp_path / "events.csv")
    arguments = ["--events", str(events), "--repository", str(tmp_path / "models"), "--dim", "8"]

    assert train_cli.main([*arguments, "--name", "cli"]) == 0
    assert train_cli.main([*arguments, "--name", "cli", "--no-evaluate"]) == 0

    out = capsys.readouterr().out
    assert "popularity" in out and "ease" in out and "EASE lambda=" in out
    assert "exported version 2" in out
    assert check_version_dir(tmp_path / "models" / "cli" / "2") == []


def test_evaluation_samples_test_users_above_the_cap():
    from ml.train import train

    shop = generate_storefront(n_users=150, n_items=60, n_events=5_000, seed=4)

    result = train(shop.interactions(), TrainParams(max_eval_users=40, tune=False))

    assert result.metrics["model"]["users"] == 40
    assert result.metrics["ease"]["users"] == 40


def test_zero_width_history_duplicates_and_negative_k_are_handled(exported):
    result, loaded, _ = exported
    a = str(result.model.item_ids[0])

    empty, _ = _recommend(loaded, np.zeros((2, 0), dtype=bytes), np.zeros((2, 0)), 3)
    popular, _ = _recommend(loaded, [[""]], [[0.0]], 3)
    twice, _ = _recommend(loaded, [[a, a], [a, ""]], [[1.0, 1.0], [1.0, 0.0]], 4)
    none, scores = _recommend(loaded, [[a]], [[1.0]], -5)

    assert empty == [popular[0], popular[0]]
    assert a not in twice[0] and a not in twice[1]
    assert none == [[]] and scores.shape == (1, 0)
