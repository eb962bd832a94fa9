"""Evasion attacks, one module per family. Importing this package registers them."""

from bastion.attacks.evasion.adaptive import BPDA, EOT
from bastion.attacks.evasion.apgd import APGD, APGDT
from bastion.attacks.evasion.bim import BIM
from bastion.attacks.evasion.cw import CarliniWagnerL0, CarliniWagnerL2, CarliniWagnerLinf
from bastion.attacks.evasion.deepfool import DeepFool, DynamicDeepFool
from bastion.attacks.evasion.ensemble import AutoAttack
from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.jsma import JSMA
from bastion.attacks.evasion.mifgsm import MIFGSM
from bastion.attacks.evasion.pgd import PGD
from bastion.attacks.evasion.pixel import OnePixel
from bastion.attacks.evasion.square import Square
from bastion.attacks.evasion.targets import TARGET_MODES, select_targets
from bastion.attacks.evasion.universal import Universal

__all__ = ["FGSM", "PGD", "TARGET_MODES", "select_targets"]
__all__ += ["APGD", "APGDT", "BIM", "BPDA", "EOT", "MIFGSM", "AutoAttack"]
__all__ += ["JSMA", "CarliniWagnerL0", "CarliniWagnerL2", "CarliniWagnerLinf", "DeepFool",
            "DynamicDeepFool", "HopSkipJump", "OnePixel", "Square", "Universal"]
