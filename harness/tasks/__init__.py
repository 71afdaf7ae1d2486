"""Tasks own the heads, the losses and the metrics, so that every method is scored by the same head.

| task | ``label`` of a batch | head | loss | metrics (all in %) |
| --- | --- | --- | --- | --- |
| ``classification`` | int64 (B,) | ``Linear(D, C)`` | softmax CE | ``top1``, ``top5`` |
| ``multilabel`` | float multi-hot (B, C) | ``Linear(D, C)`` | sigmoid BCE | ``map``, ``auc`` |
| ``localization`` | int64 (B, S) | ``Linear(D, C)`` per segment | CE per segment | ``seg_acc`` |
| ``multihead`` | ``{"verb": (B,), "noun": (B,)}`` | one per head | mean of CEs | ``verb_top1``, ``action_top1`` |
| ``segmentation`` | uint8 masks (B, T, H, W) | FPN decoder, video tokens | BCE (+ Dice / IoU) | ``miou``, ``fscore`` |
| ``avqa`` | int64 (B, 16): answer, type, words | LSTM + AV grounding on the tokens | CE | ``acc``, per type |

Every task subclasses :class:`harness.api.Task` (the shared read-out, soft targets and split-level evaluation are
there); one module per task here, each registered in ``harness/registry.py``.
"""
