"""ppo_np"""
