"""CLI commands that train and evaluate: pretrain, finetune, evaluate, soup greedy."""
