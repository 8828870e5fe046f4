"""The trainable model and batch plumbing ``finetune-backbone`` uses for encoders (BERT family,
e.g. all-MiniLM-L6-v2).

Why a model of its own and not ``AutoModelForSequenceClassification``: an encoder backbone's
feature in distrm is the *mean* of the final hidden states over the (prompt, response) pair
encoding (:func:`distrm.features.backbones.mean_pool`; it is also how sentence-transformers
trained MiniLM). ``BertForSequenceClassification`` scores the ``[CLS]`` state through the
pooler (dense + tanh) instead, so fine-tuning it would teach the body to put the preference
into a token -- and a layer -- the heads never see: the tuned backbone's features would not be
what was tuned, and the score head could not be reused on them. :class:`MeanPoolRewardModel`
is the backbone's own forward (the same pair encoding, segment ids included, the same mean
pooling) with a bias-free linear score on top, so ``Backbone.from_pretrained(out)`` features @
head reproduce the trained model's reward (checked after every save).

TRL's preference collator pads only ``input_ids``; BERT-style encoders also read segment ids
(prompt 0, response 1), so :class:`EncoderPairCollator` pads them too and
:class:`EncoderRewardTrainer` keeps their dataset columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from distrm.features.backbones import mean_pool

TYPE_COLUMNS = ("chosen_types", "rejected_types")


class MeanPoolRewardModel(PreTrainedModel):
    """encoder body -> mean over non-pad tokens -> ``score`` (Linear, d -> 1, no bias)."""

    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # the body's own attention implementation decides (BERT's takes SDPA)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    @classmethod
    def from_encoder(cls, path: str, device: torch.device) -> "MeanPoolRewardModel":
        """The pretrained encoder at ``path`` (safetensors only) + a fresh score head (seeded by
        the caller), fp32 master weights."""
        body = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        config = body.config
        config.num_labels = 1
        model = cls(config)
        model.encoder.load_state_dict(body.state_dict(), strict=True)
        model.name_or_path = path
        model.encoder.name_or_path = path  # the Backbone over this body fingerprints the base folder
        return model.to(device)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs: Any) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return SequenceClassifierOutput(logits=self.score(mean_pool(h, attention_mask)))


@dataclass
class EncoderPairCollator(DataCollatorForPreference):
    """TRL's preference collator + the segment ids (``token_type_ids``, padded with 0 like the backbone does)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if TYPE_COLUMNS[0] in examples[0]:
            types = [torch.tensor(e[c]) for c in TYPE_COLUMNS for e in examples]
            out["token_type_ids"] = pad(types, padding_value=0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)
        return out


class EncoderRewardTrainer(RewardTrainer):
    """``RewardTrainer`` that keeps the segment-id columns (``remove_unused_columns`` drops every other one)."""

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", *TYPE_COLUMNS, "margin"]
