import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "scripts", "lab"))
sys.path.insert(0, os.path.join(SRC, "scripts"))
