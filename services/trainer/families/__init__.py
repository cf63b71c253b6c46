"""Model families behind one interface (:class:`services.trainer.families.base.ModelFamily`).

* ``xgboost`` (:mod:`.xgboost_family`): seed 003, % return of closed trades (cold start: candles);
* ``cnn`` (:mod:`.cnn_family`): seed 000, a pattern's first-touch outcome from candle windows.
"""
