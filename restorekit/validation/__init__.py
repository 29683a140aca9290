"""Problems with known answers, used to validate samplers (not needed to restore images).

``gmm``: Gaussian-mixture priors whose posterior under a linear Gaussian observation is known exactly, so a
sampler's output distribution can be compared with exact posterior samples (MCGdiff's setup).
"""
