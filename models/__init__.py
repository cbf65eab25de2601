"""nn.Modules only (SASRec, GRASP attention, projectors, MP-Head): torch/transformers/peft imports only."""
