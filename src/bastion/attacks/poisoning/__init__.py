"""Training-set poisoning: dirty-label flipping, BadNets (Gu et al. 2017), the clean-label
backdoor (Turner et al. 2019) and feature collision (Shafahi et al. 2018).

Every attack is seeded and returns a `PoisonResult`: the poisoned copy of the data set and
a `PoisonRecord` (indices changed, old and new labels, the trigger, the parameters).
Gradient matching (Witches' Brew, Geiping et al. 2021) is not implemented.
"""

from bastion.attacks.poisoning.badnets import backdoor_labels, badnets
from bastion.attacks.poisoning.clean_label import clean_label
from bastion.attacks.poisoning.feature_collision import feature_collision
from bastion.attacks.poisoning.label_flip import flip_labels
from bastion.attacks.poisoning.record import PoisonRecord, PoisonResult
from bastion.attacks.poisoning.retrain import retrain_last_layer
from bastion.attacks.poisoning.trigger import Trigger

ATTACKS = ("label-flip", "badnets", "clean-label", "feature-collision")

__all__ = ["ATTACKS", "PoisonRecord", "PoisonResult", "Trigger", "backdoor_labels", "badnets", "clean_label",
           "feature_collision", "flip_labels", "retrain_last_layer"]
