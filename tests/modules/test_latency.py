import pytest
import torch

from adallava.modules.latency import (
    IGNORE_INDEX,
    LatencyEncoder,
    insert_at,
    insert_position_ids,
    latency_features,
    latency_positions,
)

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies


def test_positions_follow_the_prompt_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert latency_positions(right).tolist() == [3, 5]
    assert latency_positions(left).tolist() == [5, 5]


def test_positions_with_labels_go_before_the_answer():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX],
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 5, 6],
        ]
    )
    assert latency_positions(mask, labels).tolist() == [2, 4]


def test_insert_at_shifts_later_entries():
    values = torch.tensor([[10, 11, 12], [20, 21, 22]])
    out = insert_at(values, torch.tensor([1, 3]), torch.tensor([-1, -2]))
    assert out.tolist() == [[10, -1, 11, 12], [20, 21, 22, -2]]
    embeds = torch.arange(12.0).view(2, 3, 2)
    out = insert_at(embeds, torch.tensor([0, 2]), torch.tensor([[9.0, 9.0], [8.0, 8.0]]))
    assert out[0].tolist() == [[9, 9], [0, 1], [2, 3], [4, 5]]
    assert out[1].tolist() == [[6, 7], [8, 9], [8, 8], [10, 11]]


def test_inserted_position_ids_continue_each_row():
    positions = torch.tensor([[0, 1, 2, 0, 0], [0, 0, 0, 1, 2]])  # right-padded row, left-padded row
    out = insert_position_ids(positions, torch.tensor([3, 5]))
    assert out.tolist() == [[0, 1, 2, 3, 1, 1], [0, 0, 0, 1, 2, 3]]


def test_latency_features_match_the_official_encoding():
    units = torch.tensor([0, 3])
    features = latency_features(units, total_units=8, prefix_units=4, frequencies=128)
    assert features.shape == (2, 256)
    x = 2 * torch.pi * 3 / 5  # q = n / (Nu - Pu + 1)
    assert torch.isclose(features[1, 0], torch.sin(torch.tensor(x)))
    assert torch.isclose(features[1, 128], torch.cos(torch.tensor(x)))
    f5 = 1 / 10000 ** (5 / 128)
    assert torch.isclose(features[1, 5], torch.sin(torch.tensor(x * f5)), atol=1e-6)
    assert torch.equal(features[0, :128], torch.zeros(128))


def test_encoder_gives_one_token_per_row():
    encoder = LatencyEncoder(hidden_size=32)
    tokens = encoder(torch.tensor([0, 1, 4]), total_units=8, prefix_units=4)
    assert tokens.shape == (3, 32)
    assert not torch.allclose(tokens[0], tokens[1])
