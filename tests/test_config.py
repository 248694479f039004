import pytest

from videostyle.config import StyleConfig


def test_hash_is_stable_and_changes_with_settings_that_change_frames():
    a = StyleConfig(styles=("s.jpg",), size=256)
    assert a.stable_hash() == StyleConfig(styles=("s.jpg",), size=256).stable_hash()
    assert a.stable_hash() != StyleConfig(styles=("s.jpg",), size=320).stable_hash()


def test_json_roundtrip_keeps_equality():
    a = StyleConfig(styles=("a.jpg", "b.jpg"), style_weights=(0.7, 0.3), flow_offsets=(1, 2, 4))
    b = StyleConfig.from_dict(a.to_dict())
    assert a == b and a.stable_hash() == b.stable_hash()


def test_blend_weights_are_normalised():
    assert StyleConfig(styles=("a", "b"), style_weights=(3, 1)).blend_weights == (0.75, 0.25)
    assert StyleConfig(styles=("a", "b")).blend_weights == (0.5, 0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(styles=()), "at least one style image is required"),
    (dict(styles=("a", "b"), style_weights=(1.0,)), "2 style images but 1 style weights"),
    (dict(styles=("a",), init="warp"), "--init must be one of prev-warped-unchanged, prev-warped-inside, prev-warped, prev, content, noise; got 'warp'"),
    (dict(styles=("a",), size=8), "--size must be at least 16 px, got 8"),
])
def test_invalid_settings_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError) as err:
        StyleConfig(**kwargs)
    assert str(err.value) == message
