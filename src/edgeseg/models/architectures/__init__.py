"""One module per architecture; importing this package registers them all."""

from edgeseg.models.architectures import (basic_encdec, dabnet, edanet, fcn_alexnet, icnet,  # noqa: F401
                                         jacintonet11_seg, lmsegnet_v1, pspnet, swiftnet)
