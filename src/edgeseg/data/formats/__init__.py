"""One module per dataset layout; each turns a DatasetConfig into a DatasetSource."""

from edgeseg.data.formats.camvid import open_camvid
from edgeseg.data.formats.cityscapes import open_cityscapes
from edgeseg.data.formats.folder import open_folder
from edgeseg.data.formats.listfile import open_list
from edgeseg.data.formats.voc import open_voc
from edgeseg.data.synthetic import open_synthetic

OPENERS = {
    "camvid": open_camvid,
    "cityscapes": open_cityscapes,
    "voc": open_voc,
    "folder": open_folder,
    "list": open_list,
    "synthetic": open_synthetic,
}
