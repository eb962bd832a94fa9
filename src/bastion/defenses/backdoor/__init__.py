"""Defenses against poisoning and backdoors: Neural Cleanse (Wang et al. 2019) with
unlearning and neuron pruning, activation clustering (Chen et al. 2018), spectral
signatures (Tran et al. 2018), STRIP (Gao et al. 2019) and fine-pruning (Liu et al. 2018)."""

from bastion.defenses.backdoor.activation_clustering import (
    ActivationClusteringConfig,
    activation_clustering,
    persistence,
)
from bastion.defenses.backdoor.fine_pruning import FinePruningConfig, fine_prune
from bastion.defenses.backdoor.mitigation import UnlearnConfig, prune_neurons, unlearn
from bastion.defenses.backdoor.neural_cleanse import (
    NeuralCleanseConfig,
    NeuralCleanseResult,
    neural_cleanse,
    stamp,
)
from bastion.defenses.backdoor.spectral import spectral_signatures
from bastion.defenses.backdoor.strip import Strip

__all__ = ["ActivationClusteringConfig", "FinePruningConfig", "NeuralCleanseConfig", "NeuralCleanseResult", "Strip",
           "UnlearnConfig", "activation_clustering", "fine_prune", "neural_cleanse", "persistence", "prune_neurons",
           "spectral_signatures", "stamp", "unlearn"]
